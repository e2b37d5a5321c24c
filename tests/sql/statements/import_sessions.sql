
INSERT INTO "s".agent_sessions
    (tenant_id, id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl, last_seq)
SELECT $1, id, user_id, agent_name, metadata, created_at, updated_at, expires_at,
       make_interval(secs => ttl_seconds), last_seq
FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::timestamptz[], $7::timestamptz[],
            $8::timestamptz[], $9::float8[], $10::bigint[])
    AS t(id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl_seconds, last_seq)
