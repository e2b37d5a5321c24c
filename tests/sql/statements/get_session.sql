
SELECT s.id, s.user_id, s.agent_name, s.metadata, s.created_at, s.updated_at, s.expires_at, s.ttl,
       m.id AS m_id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw,
       m.created_at AS m_created_at, m.key_id, m.sealed, m.branch, m.covers_from, m.covers_to
FROM "s".agent_sessions s
LEFT JOIN "s".conversation_messages m
       ON m.tenant_id = s.tenant_id AND m.session_id = s.id AND m.session_id = $2 AND m.branch = 'main'
WHERE s.tenant_id = $1 AND s.id = $2
ORDER BY m.seq
