
WITH page AS (
    SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
    FROM "s".agent_sessions
    WHERE tenant_id = $1 AND user_id = $2
      AND (updated_at, id) < (COALESCE($3::timestamptz, 'infinity'), COALESCE($4::text, ''))
      AND ($6::text IS NULL OR agent_name = $6)
    ORDER BY updated_at DESC, id DESC
    LIMIT $5
)
SELECT p.id, p.user_id, p.agent_name, p.metadata, p.created_at, p.updated_at, p.expires_at, p.ttl,
       m.id AS m_id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw,
       m.created_at AS m_created_at, m.key_id, m.sealed, m.branch, m.covers_from, m.covers_to
FROM page p
LEFT JOIN LATERAL (
    SELECT * FROM "s".conversation_messages x
    WHERE x.tenant_id = $1 AND x.session_id = p.id AND x.branch = 'main'
    ORDER BY x.seq DESC
    LIMIT $7
) m ON true
ORDER BY p.updated_at DESC, p.id DESC, m.seq
