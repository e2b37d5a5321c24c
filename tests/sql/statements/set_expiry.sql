
UPDATE "s".agent_sessions
   SET ttl = $4::interval, expires_at = now() + $5::interval
WHERE tenant_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)
RETURNING id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
