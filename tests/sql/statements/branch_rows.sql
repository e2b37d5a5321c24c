
SELECT name, parent, fork_seq, created_at, deleted_at, cleared_to FROM "s".conversation_branches
WHERE session_id = $2 AND tenant_id = $1
