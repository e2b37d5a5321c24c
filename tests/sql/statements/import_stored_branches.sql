
SELECT session_id, name, parent, fork_seq, deleted_at, cleared_to FROM "s".conversation_branches
WHERE tenant_id = $1 AND session_id = ANY($2::text[])
