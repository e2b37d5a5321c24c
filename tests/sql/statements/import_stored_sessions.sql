
SELECT id, user_id, agent_name FROM "s".agent_sessions WHERE tenant_id = $1 AND id = ANY($2::text[])
