
WITH victims AS (
    SELECT id FROM "s".agent_sessions WHERE tenant_id = $1 AND user_id = $2 LIMIT $3 FOR UPDATE
), messages AS (
    DELETE FROM "s".conversation_messages m USING victims v
    WHERE m.tenant_id = $1 AND m.session_id = v.id
    RETURNING 1
), sessions AS (
    DELETE FROM "s".agent_sessions s USING victims v WHERE s.tenant_id = $1 AND s.id = v.id
    RETURNING s.id
), counts AS (
    SELECT (SELECT count(*) FROM sessions) AS sessions, (SELECT count(*) FROM messages) AS messages
), audit AS (
    INSERT INTO "s".convostore_audit (action, actor, tenant_id, user_id, rows, details)
    SELECT 'delete_user', $4, $1, $2, c.sessions, jsonb_build_object('messages', c.messages)
    FROM counts c WHERE c.sessions > 0
)
SELECT sessions, messages FROM counts
