
SELECT count(*) FROM "s".agent_sessions
WHERE updated_at < $2::timestamptz
  AND ($1::text IS NULL OR tenant_id = $1)
  AND ($3::text IS NULL OR user_id = $3)
  AND ($4::text IS NULL OR agent_name = $4)
