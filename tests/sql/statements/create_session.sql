
INSERT INTO "s".agent_sessions (tenant_id, id, user_id, agent_name, metadata, ttl, expires_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::interval, now() + $7::interval)
RETURNING id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
