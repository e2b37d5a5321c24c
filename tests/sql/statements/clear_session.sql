
WITH gone AS (
    DELETE FROM "s".conversation_messages
    WHERE tenant_id = $1 AND session_id = $2 AND ($3::text IS NULL OR user_id = $3)
    RETURNING user_id
), branches AS (
    DELETE FROM "s".conversation_branches
    WHERE tenant_id = $1 AND session_id = $2 AND ($3::text IS NULL OR user_id = $3)
), audit AS (
    INSERT INTO "s".convostore_audit (action, actor, tenant_id, user_id, session_id, rows)
    SELECT 'clear_session', $4, $1, min(user_id), $2, count(*) FROM gone HAVING count(*) > 0
)
SELECT count(*) FROM gone
