
WITH updated AS (
    UPDATE "s".conversation_branches SET cleared_to = $5
    WHERE session_id = $2 AND tenant_id = $1 AND name = $3
    RETURNING 1
)
INSERT INTO "s".conversation_branches (session_id, tenant_id, name, user_id, cleared_to)
SELECT $2, $1, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM updated)
