
INSERT INTO "s".conversation_messages
    (tenant_id, session_id, seq, id, user_id, role, content, tool_calls, tool_call_id, raw, created_at, key_id, sealed,
     branch, covers_from, covers_to, tokens, kind)
SELECT $1, t.session_id, t.seq, t.id, s.user_id, t.role, t.content, t.tool_calls::jsonb, t.tool_call_id,
       t.raw::jsonb, t.created_at, t.key_id, t.sealed, t.branch, t.covers_from, t.covers_to, t.tokens, t.kind
FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::timestamptz[], $11::text[], $12::bytea[],
            $13::text[], $14::bigint[], $15::bigint[], $16::int[], $17::text[])
    AS t(session_id, seq, id, role, content, tool_calls, tool_call_id, raw, created_at, key_id, sealed,
         branch, covers_from, covers_to, tokens, kind)
JOIN "s".agent_sessions s ON s.tenant_id = $1 AND s.id = t.session_id
