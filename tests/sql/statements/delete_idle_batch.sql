
WITH victims AS (
    SELECT tenant_id, id FROM "s".agent_sessions
    WHERE updated_at < $2::timestamptz
      AND ($1::text IS NULL OR tenant_id = $1)
      AND ($3::text IS NULL OR user_id = $3)
      AND ($4::text IS NULL OR agent_name = $4)
    ORDER BY updated_at
    LIMIT $5
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM "s".agent_sessions s USING victims v WHERE s.tenant_id = v.tenant_id AND s.id = v.id
    RETURNING s.id
), audit AS (
    INSERT INTO "s".convostore_audit (action, actor, tenant_id, user_id, rows, details)
    SELECT 'delete_idle_sessions', $6, $1, $3, count(*), jsonb_build_object('idle_before', $2::timestamptz)
    FROM gone HAVING count(*) > 0
)
SELECT id FROM gone
