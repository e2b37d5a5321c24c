
UPDATE "s".agent_sessions SET metadata = metadata || $4::jsonb, updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)
RETURNING id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
