
WITH gone AS (
    DELETE FROM "s".agent_sessions WHERE tenant_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)
    RETURNING user_id
), audit AS (
    INSERT INTO "s".convostore_audit (action, actor, tenant_id, user_id, session_id, rows)
    SELECT 'delete_session', $4, $1, user_id, $2, 1 FROM gone
)
SELECT count(*) FROM gone
