
WITH fixed AS (
    SELECT tenant_id, id FROM "s".agent_sessions
    WHERE expires_at <= now() AND ($1::text IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR user_id = $3)
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), sliding AS (
    SELECT tenant_id, id FROM "s".agent_sessions
    WHERE ttl IS NOT NULL AND updated_at <= now() - ttl
      AND ($1::text IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR user_id = $3)
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), victims AS (
    SELECT * FROM fixed UNION SELECT * FROM sliding
), gone AS (
    DELETE FROM "s".agent_sessions s USING victims v WHERE s.tenant_id = v.tenant_id AND s.id = v.id
    RETURNING s.id
), audit AS (
    INSERT INTO "s".convostore_audit (action, actor, tenant_id, user_id, rows)
    SELECT 'delete_expired_sessions', $4, $1, $3, count(*) FROM gone HAVING count(*) > 0
)
SELECT id FROM gone
