
WITH updated AS (
    UPDATE "s".conversation_branches SET deleted_at = now()
    WHERE session_id = $2 AND tenant_id = $1 AND name = $3
    RETURNING 1
)
INSERT INTO "s".conversation_branches (session_id, tenant_id, name, user_id, deleted_at)
SELECT $2, $1, $3, $4, now() WHERE NOT EXISTS (SELECT 1 FROM updated)
