
DELETE FROM "s".conversation_messages m WHERE m.session_id = $2 AND m.tenant_id = $1 AND m.seq = $3
RETURNING m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.key_id, m.sealed,
          m.branch, m.covers_from, m.covers_to
