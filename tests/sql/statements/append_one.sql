
WITH b AS (
    UPDATE "s".agent_sessions s SET last_seq = s.last_seq + 1, updated_at = now()
     WHERE s.tenant_id = $1 AND s.id = $2 AND ($3::text IS NULL OR s.user_id = $3) AND NOT s.forked
    RETURNING s.last_seq, s.user_id
)
INSERT INTO "s".conversation_messages AS m
    (tenant_id, session_id, seq, user_id, created_at, id, role, content, tool_calls, tool_call_id, raw,
     key_id, sealed, tokens, kind, branch)
SELECT $1, $2, b.last_seq, b.user_id, now(), $4, $5, $6, $7::jsonb, $8, $9::jsonb, $10, $11, $12, $13, 'main'
  FROM b
RETURNING m.id::text, m.seq, m.created_at, 'i'::text AS outcome
