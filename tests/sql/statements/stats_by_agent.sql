
SELECT s.agent_name, count(*) AS sessions, COALESCE(sum(mc.n), 0)::bigint AS messages
FROM (SELECT * FROM "s".agent_sessions
       WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2)) s
LEFT JOIN (SELECT tenant_id, session_id, count(*) AS n FROM "s".conversation_messages
           WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2)
           GROUP BY tenant_id, session_id) mc
       ON mc.tenant_id = s.tenant_id AND mc.session_id = s.id
GROUP BY s.agent_name
ORDER BY sessions DESC, s.agent_name
