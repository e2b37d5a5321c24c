
SELECT id, seq, role, content, tool_calls, tool_call_id, raw, created_at, key_id, sealed, branch, covers_from,
       covers_to, tokens
FROM "s".conversation_messages
WHERE tenant_id = $1 AND session_id = $2 AND seq > $3
ORDER BY seq
LIMIT $4
