
WITH page AS (
    SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
    FROM "s".agent_sessions
    WHERE tenant_id = $1
      AND (updated_at, id) < (COALESCE($3::timestamptz, 'infinity'), COALESCE($4::text, ''))
      AND ($2::text IS NULL OR user_id = $2)
      AND ($6::text IS NULL OR agent_name = $6)
      AND ($7::timestamptz IS NULL OR updated_at >= $7)
      AND ($8::jsonb IS NULL OR metadata @> $8::jsonb)
    ORDER BY updated_at DESC, id DESC
    LIMIT $5
)
, counts AS (
    SELECT session_id, count(*) AS n FROM "s".conversation_messages
    WHERE tenant_id = $1 AND session_id IN (SELECT id FROM page) GROUP BY session_id
)
SELECT p.*, COALESCE(c.n, 0) AS message_count FROM page p LEFT JOIN counts c ON c.session_id = p.id
ORDER BY p.updated_at DESC, p.id DESC
