
SELECT branch, count(*) AS n FROM "s".conversation_messages WHERE session_id = $2 AND tenant_id = $1 GROUP BY branch
