
WITH added AS (
    INSERT INTO "s".conversation_branches
        (session_id, tenant_id, name, user_id, parent, fork_seq, created_at, deleted_at, cleared_to)
    SELECT t.session_id, $1, t.name, s.user_id, t.parent, t.fork_seq, t.created_at, t.deleted_at, t.cleared_to
    FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[], $7::timestamptz[], $8::bigint[])
        AS t(session_id, name, parent, fork_seq, created_at, deleted_at, cleared_to)
    JOIN "s".agent_sessions s ON s.tenant_id = $1 AND s.id = t.session_id
    ON CONFLICT DO NOTHING
    RETURNING session_id
)
UPDATE "s".agent_sessions s SET forked = true
WHERE s.tenant_id = $1 AND s.id = ANY($2::text[]) AND s.id IN (SELECT session_id FROM added)
