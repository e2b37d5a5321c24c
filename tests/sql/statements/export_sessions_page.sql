
SELECT tenant_id, id, user_id, agent_name, metadata, created_at, updated_at, expires_at,
       extract(epoch FROM ttl)::float8 AS ttl_seconds, last_seq
FROM "s".agent_sessions
WHERE ($1::text IS NULL OR tenant_id = $1)
  AND ($2::text IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR id = $3)
  AND (tenant_id, id) > (COALESCE($4::text, ''), COALESCE($5::text, ''))
ORDER BY tenant_id, id
LIMIT $6
