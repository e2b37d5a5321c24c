
WITH gone AS (
    DELETE FROM "s".conversation_messages WHERE session_id = $2 AND tenant_id = $1 AND branch = $3 AND seq > $4
    RETURNING 1
)
SELECT count(*) FROM gone
