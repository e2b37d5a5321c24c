
WITH q AS (SELECT websearch_to_tsquery('english', $5) AS query),
hits AS (
    SELECT m.tenant_id, m.session_id, m.seq, m.id, m.role, m.branch, m.created_at, m.user_id, m.content,
           ts_rank_cd(to_tsvector('english', left(m.content, 100000)), q.query) AS rank
    FROM "s".conversation_messages m, q
    WHERE to_tsvector('english', left(m.content, 100000)) @@ q.query AND m.sealed IS NULL
      AND ($1::text IS NULL OR m.tenant_id = $1) AND ($2::text IS NULL OR m.user_id = $2)
      AND ($3::text IS NULL OR m.session_id = $3)
      AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM "s".agent_sessions s
                                       WHERE s.tenant_id = m.tenant_id AND s.id = m.session_id AND s.agent_name = $4))
    ORDER BY rank DESC, m.created_at DESC, m.session_id, m.seq
    LIMIT $6 OFFSET $7
)
SELECT h.tenant_id, h.session_id, h.seq, h.id, h.role, h.branch, h.created_at, h.user_id, h.rank,
       ts_headline('english', left(h.content, 100000), q.query,
                   'MaxWords=' || $8::int || ', MinWords=' || greatest($8::int / 3, 1) || ', MaxFragments=2, '
                   || 'FragmentDelimiter=" ... ", StartSel="' || $9::text || '", StopSel="' || $10::text || '"')
       AS snippet
FROM hits h, q
ORDER BY h.rank DESC, h.created_at DESC, h.session_id, h.seq
