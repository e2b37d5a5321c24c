
WITH b AS (
    UPDATE "s".agent_sessions s SET last_seq = s.last_seq + cardinality($4::text[]), updated_at = now()
     WHERE s.tenant_id = $1 AND s.id = $2 AND ($3::text IS NULL OR s.user_id = $3) AND NOT s.forked
    RETURNING s.last_seq - cardinality($4::text[]) AS base, s.user_id
)
INSERT INTO "s".conversation_messages AS m
    (tenant_id, session_id, seq, user_id, created_at, id, role, content, tool_calls, tool_call_id, raw,
     key_id, sealed, tokens, kind, branch)
SELECT $1, $2, b.base + n.ord, b.user_id, now(), n.id, n.role, n.content, n.tool_calls::jsonb, n.tool_call_id,
       n.raw::jsonb, n.key_id, n.sealed, n.tokens, n.kind, 'main'
  FROM b, unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[],
                 $12::int[], $13::text[]) WITH ORDINALITY
          AS n(id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, tokens, kind, ord)
RETURNING m.id::text, m.seq, m.created_at, 'i'::text AS outcome
