
SELECT m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.key_id, m.sealed,
       m.branch, m.covers_from, m.covers_to, m.tokens, m.session_id
FROM unnest($2::text[], $3::text[]) AS k(session_id, id)
JOIN "s".conversation_messages m ON m.tenant_id = $1 AND m.session_id = k.session_id AND m.id = k.id
UNION
SELECT m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.key_id, m.sealed,
       m.branch, m.covers_from, m.covers_to, m.tokens, m.session_id
FROM unnest($2::text[], $4::bigint[]) AS k(session_id, seq)
JOIN "s".conversation_messages m ON m.tenant_id = $1 AND m.session_id = k.session_id AND m.seq = k.seq
