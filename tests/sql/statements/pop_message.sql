
WITH held AS (
    SELECT s.id FROM "s".agent_sessions s
     WHERE s.tenant_id = $1 AND s.id = $2 AND NOT (s.forked OR s.compacted)
       FOR UPDATE
), victim AS (
    SELECT m.seq FROM "s".conversation_messages m
    WHERE m.tenant_id = $1 AND m.session_id = $2 AND ($3::text IS NULL OR m.user_id = $3)
      AND EXISTS (SELECT 1 FROM held)
    ORDER BY m.seq DESC LIMIT 1 FOR UPDATE
)
DELETE FROM "s".conversation_messages m USING victim
WHERE m.tenant_id = $1 AND m.session_id = $2 AND m.seq = victim.seq
RETURNING m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.key_id, m.sealed,
          m.branch, m.covers_from, m.covers_to
