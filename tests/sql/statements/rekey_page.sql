
SELECT tenant_id, session_id, seq, id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, branch
FROM "s".conversation_messages
WHERE ($1::text IS NULL OR tenant_id = $1)
  AND (session_id, tenant_id, seq) > ($2::text, $3::text, $4::bigint)
  AND key_id IS DISTINCT FROM $5
  AND ($6 OR sealed IS NOT NULL)
ORDER BY session_id, tenant_id, seq
LIMIT $7
