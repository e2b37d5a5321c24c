
UPDATE "s".agent_sessions s
   SET last_seq = greatest(s.last_seq, m.max_seq), compacted = s.compacted OR m.compacted
FROM (SELECT session_id, max(seq) AS max_seq, bool_or(covers_from IS NOT NULL) AS compacted
      FROM "s".conversation_messages
      WHERE tenant_id = $1 AND session_id = ANY($2::text[]) GROUP BY session_id) m
WHERE s.tenant_id = $1 AND s.id = m.session_id
