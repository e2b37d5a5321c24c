
SELECT user_id, forked, last_seq FROM "s".agent_sessions WHERE tenant_id = $1 AND id = $2 FOR UPDATE
