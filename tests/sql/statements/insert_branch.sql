
INSERT INTO "s".conversation_branches (session_id, tenant_id, name, user_id, parent, fork_seq, cleared_to)
VALUES ($2, $1, $3, $4, $5, $6, nullif($7::bigint, 0))
ON CONFLICT DO NOTHING
RETURNING created_at
