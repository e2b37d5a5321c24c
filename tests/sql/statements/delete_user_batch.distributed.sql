
WITH victims AS (
    SELECT id FROM "s".agent_sessions WHERE tenant_id = $1 AND user_id = $2 LIMIT $3
), messages AS (
    DELETE FROM "s".conversation_messages m WHERE m.tenant_id = $1 AND m.session_id IN (SELECT id FROM victims)
    RETURNING 1
), sessions AS (
    DELETE FROM "s".agent_sessions s WHERE s.tenant_id = $1 AND s.id IN (SELECT id FROM victims) AND s.user_id = $2
    RETURNING s.id
), counts AS (
    SELECT (SELECT count(*) FROM sessions) AS sessions, (SELECT count(*) FROM messages) AS messages
), audit AS (
    INSERT INTO "s".convostore_audit (action, actor, tenant_id, user_id, rows, details)
    SELECT 'delete_user', $4, $1, $2, c.sessions, jsonb_build_object('messages', c.messages)
    FROM counts c WHERE c.sessions > 0
)
SELECT sessions, messages FROM counts
