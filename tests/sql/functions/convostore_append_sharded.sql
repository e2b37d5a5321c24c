-- On distributed tables (Citus), appends call this function instead of convostore_append,
-- with the same arguments and results. Where the node it runs on holds the shards of every
-- session of the call (checked after taking the lock Citus's executor takes before writing
-- a shard, which keeps writes out while the shard moves or splits: convostore_hold_shards),
-- it writes the shards' own tables: the same steps as convostore_append's batch path, one
-- shard at a time: allocate each session's seq range (waiting for its row, or skipping rows
-- other transactions hold when p_wait is false), create on first write, check 'main' in a
-- session that was forked, insert the messages, and report the sessions not written ('n',
-- 'o' or 'b'), after returning the stored rows of requests already stored (p_probe).
-- Otherwise (a shard elsewhere, a branch other than 'main') it calls convostore_append,
-- whose statements Citus routes to the shards; for a call of several sessions, which that
-- cannot run on distributed tables, it reports every request busy instead, and the caller
-- sends them again session by session.
--
-- The statements name the shard's tables, so they cannot be written in the function
-- itself: each is prepared once per connection and shard (PREPARE inside format(), %2$s the
-- shard of the sessions, %3$s that of the messages; named after the shard and this version
-- of the statements, cs12, kept by the connection: change a statement's text and its
-- version with it) and run with the call's values (EXECUTE), on one plan kept per
-- statement. None goes through Citus's planner. A statement the connection has not marked
-- prepared (a setting; a rolled-back call leaves the statement prepared but not the mark)
-- is looked up before it is prepared again. Where a statement comes in two shapes, _w waits
-- for the session rows and _s skips those another transaction holds; a lone append prepares
-- both, which readies the connection for batches too.
CREATE OR REPLACE FUNCTION "s".convostore_append_sharded(
    p_tenant text, p_route text, p_scope_user text, p_probe boolean, p_wait boolean,
    p_reqs int[], p_sessions text[], p_owners text[], p_agents text[], p_branches text[],
    p_ids text[], p_roles text[], p_contents text[], p_tool_calls text[], p_tool_call_ids text[], p_raws text[],
    p_key_ids text[], p_sealed bytea[], p_tokens int[], p_kinds text[]
) RETURNS TABLE (req int, session_id text, id text, seq bigint, created_at timestamptz, outcome text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    v_now timestamptz := now();
    v_many boolean := EXISTS (SELECT 1 FROM unnest(p_sessions) AS x WHERE x <> p_sessions[1]);
    -- the call's sessions ordered by shard, with their row counts, owners and agents
    a_shards bigint[];
    a_sids text[];
    a_counts bigint[];
    a_owners text[];
    a_agents text[];
    v_first int := 1;
    v_last int;
    v_shard bigint;
    v_sids text[];  -- the shard's sessions, with their row counts, owners and agents
    v_counts bigint[];
    v_owners text[];
    v_agents text[];
    v_bumped text[];  -- the sessions allocated, with their first seq less one, owners, and forked
    v_bases bigint[];
    v_holders text[];
    v_forked text[];
    v_left text[];  -- the sessions not allocated yet
    v_lcounts bigint[];
    v_lowners text[];
    v_lagents text[];
    r_ids text[];
    r_bases bigint[];
    r_holders text[];
    r_forked text[];
    v_base bigint;
    v_holder text;
    v_isforked boolean;
    v_created timestamptz;
    v_at int;
    v_written boolean;
    v_round int;
    v_done int[] := '{}';  -- requests found stored (probed)
    v_row record;
    q_reqs int[];  -- the shard's messages, probed
    q_sids text[];
    q_ids text[];
    q_roles text[];
    q_contents text[];
    q_tool_calls text[];
    q_tool_call_ids text[];
    q_raws text[];
    v_sid text;
    -- the shard's messages (all of the call's when it has one shard)
    m_sessions text[] := p_sessions;
    m_ids text[] := p_ids;
    m_roles text[] := p_roles;
    m_contents text[] := p_contents;
    m_tool_calls text[] := p_tool_calls;
    m_tool_call_ids text[] := p_tool_call_ids;
    m_raws text[] := p_raws;
    m_key_ids text[] := p_key_ids;
    m_sealed bytea[] := p_sealed;
    m_tokens int[] := p_tokens;
    m_kinds text[] := p_kinds;
BEGIN
    IF v_many THEN
        SELECT array_agg(c.shard ORDER BY c.shard, c.sid), array_agg(c.sid ORDER BY c.shard, c.sid),
               array_agg(c.n ORDER BY c.shard, c.sid), array_agg(c.owner ORDER BY c.shard, c.sid),
               array_agg(c.agent ORDER BY c.shard, c.sid)
          INTO a_shards, a_sids, a_counts, a_owners, a_agents
          FROM (SELECT pg_catalog.get_shard_id_for_distribution_column('"s".agent_sessions', n.sid) AS shard,
                       n.sid, count(*) AS n, min(n.owner) AS owner, min(n.agent) AS agent
                  FROM unnest(p_sessions, p_owners, p_agents) AS n(sid, owner, agent) GROUP BY n.sid) c;
    ELSE
        a_shards := ARRAY[pg_catalog.get_shard_id_for_distribution_column('"s".agent_sessions', p_sessions[1])];
        a_sids := ARRAY[p_sessions[1]];
        a_counts := ARRAY[cardinality(p_ids)::bigint];
        a_owners := ARRAY[p_owners[1]];
        a_agents := ARRAY[p_agents[1]];
    END IF;
    IF NOT ('main' = ALL (p_branches)) OR NOT "s".convostore_hold_shards(a_shards) THEN
        IF v_many THEN
            RETURN QUERY SELECT DISTINCT n.req, n.sid, NULL::text, NULL::bigint, NULL::timestamptz, 'b'::text
                           FROM unnest(p_reqs, p_sessions) AS n(req, sid);
        ELSE
            RETURN QUERY SELECT * FROM "s".convostore_append(
                p_tenant, p_route, p_scope_user, p_probe, p_wait, p_reqs, p_sessions, p_owners, p_agents, p_branches,
                p_ids, p_roles, p_contents, p_tool_calls, p_tool_call_ids, p_raws, p_key_ids, p_sealed, p_tokens,
                p_kinds);
        END IF;
        RETURN;
    END IF;
    PERFORM set_config('convostore.tenant_id', p_tenant, true),
            set_config('convostore.user_id', coalesce(p_scope_user, '*'), true);
    WHILE v_first <= cardinality(a_shards) LOOP
        v_shard := a_shards[v_first];
        v_last := v_first;
        WHILE v_last < cardinality(a_shards) AND a_shards[v_last + 1] = v_shard LOOP
            v_last := v_last + 1;
        END LOOP;
        v_sids := a_sids[v_first:v_last];
        v_counts := a_counts[v_first:v_last];
        v_owners := a_owners[v_first:v_last];
        v_agents := a_agents[v_first:v_last];
        v_first := v_last + 1;
        -- Allocate (waiting, or skipping a row another transaction holds); then create on
        -- first write what does not exist; then, waiting, allocate what a concurrent creator
        -- won the race for (its row is committed by now).
        v_written := false;
        IF p_probe THEN
            -- Requests already stored: their rows are returned and nothing is written for them.
            SELECT array_agg(n.req ORDER BY n.ord), array_agg(n.sid ORDER BY n.ord), array_agg(n.id ORDER BY n.ord),
                   array_agg(n.role ORDER BY n.ord), array_agg(n.content ORDER BY n.ord),
                   array_agg(n.tool_calls ORDER BY n.ord), array_agg(n.tool_call_id ORDER BY n.ord),
                   array_agg(n.raw ORDER BY n.ord)
              INTO q_reqs, q_sids, q_ids, q_roles, q_contents, q_tool_calls, q_tool_call_ids, q_raws
              FROM unnest(p_reqs, p_sessions, p_ids, p_roles, p_contents, p_tool_calls, p_tool_call_ids, p_raws)
                   WITH ORDINALITY AS n(req, sid, id, role, content, tool_calls, tool_call_id, raw, ord)
             WHERE n.sid = ANY (v_sids);
            IF current_setting('convostore.cs12_probe_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_probe_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, int[], text[], text[], text[], text[], text[], text[], text[]) AS
            WITH n AS (
                SELECT * FROM unnest($2, $3, $4, $5, $6, $7, $8, $9) WITH ORDINALITY
                              AS n(req, sid, id, role, content, tool_calls, tool_call_id, raw, ord)),
            done AS (
                SELECT f.req FROM (SELECT DISTINCT ON (n.req) n.req, n.sid, n.id FROM n ORDER BY n.req, n.ord) f
                 WHERE EXISTS (SELECT 1 FROM %3$s x WHERE x.session_id = f.sid AND x.tenant_id = $1 AND x.id = f.id))
            SELECT n.req, m.session_id::text, m.id::text, m.seq, m.created_at,
                   CASE WHEN (m.role, m.content, m.tool_calls, m.tool_call_id, m.raw)
                             IS NOT DISTINCT FROM (n.role, n.content, n.tool_calls::jsonb, n.tool_call_id, n.raw::jsonb)
                        THEN ''r'' ELSE ''c'' END AS outcome
              FROM n JOIN done d ON d.req = n.req
              JOIN %3$s m ON m.session_id = n.sid AND m.tenant_id = $1 AND m.id = n.id', 'cs12_probe_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_probe_' || v_shard, 'y', false);
            END IF;
            FOR v_row IN EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L, %L, %L)', 'cs12_probe_' || v_shard,
                                        p_tenant, q_reqs, q_sids, q_ids, q_roles, q_contents, q_tool_calls,
                                        q_tool_call_ids, q_raws)
            LOOP
                req := v_row.req;
                session_id := v_row.session_id;
                id := v_row.id;
                seq := v_row.seq;
                created_at := v_row.created_at;
                outcome := v_row.outcome;
                RETURN NEXT;
                v_done := v_done || v_row.req;
            END LOOP;
            IF cardinality(v_done) > 0 THEN  -- the shard's sessions, without the requests stored
                SELECT array_agg(c.sid ORDER BY c.sid), array_agg(c.n ORDER BY c.sid),
                       array_agg(c.owner ORDER BY c.sid), array_agg(c.agent ORDER BY c.sid)
                  INTO v_sids, v_counts, v_owners, v_agents
                  FROM (SELECT n.sid, count(*) AS n, min(n.owner) AS owner, min(n.agent) AS agent
                          FROM unnest(p_reqs, p_sessions, p_owners, p_agents) AS n(req, sid, owner, agent)
                         WHERE n.sid = ANY (v_sids) AND n.req <> ALL (v_done) GROUP BY n.sid) c;
                CONTINUE WHEN v_sids IS NULL;
            END IF;
        END IF;
        IF cardinality(v_sids) = 1 AND v_counts[1] = 1 THEN
            -- One message of one session (a lone append, and most of a batch's shards):
            -- allocated and inserted by one statement.
            v_at := CASE WHEN cardinality(v_done) = 0 THEN array_position(p_sessions, v_sids[1])
                         ELSE (SELECT n.ord FROM unnest(p_sessions, p_reqs) WITH ORDINALITY AS n(sid, req, ord)
                                WHERE n.sid = v_sids[1] AND n.req <> ALL (v_done) ORDER BY n.ord LIMIT 1) END;
            IF current_setting('convostore.cs12_write1_w_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_write1_w_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, text, text, timestamptz, text, text, text, text, text, text, text, bytea, int, text) AS
            WITH b AS (
                UPDATE %2$s s SET last_seq = s.last_seq + 1, updated_at = $4
                 WHERE s.tenant_id = $1 AND s.id = $2 AND ($3 IS NULL OR s.user_id = $3)
                RETURNING s.last_seq, s.user_id, s.forked)
            INSERT INTO %3$s AS m
                (tenant_id, session_id, seq, user_id, created_at, id, role, content, tool_calls, tool_call_id, raw,
                 key_id, sealed, tokens, kind, branch)
            SELECT $1, $2, b.last_seq, b.user_id, $4, $5, $6, $7, $8::jsonb, $9, $10::jsonb, $11, $12, $13, $14, ''main'' FROM b
            RETURNING m.seq, m.created_at, (SELECT b.forked FROM b)', 'cs12_write1_w_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_write1_w_' || v_shard, 'y', false);
            END IF;
            IF current_setting('convostore.cs12_write1_s_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_write1_s_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, text, text, timestamptz, text, text, text, text, text, text, text, bytea, int, text) AS
            WITH b AS (
                UPDATE %2$s s SET last_seq = s.last_seq + 1, updated_at = $4
                 WHERE s.tenant_id = $1 AND s.id = $2 AND ($3 IS NULL OR s.user_id = $3)
               AND s.id IN (SELECT l.id FROM %2$s l WHERE l.tenant_id = $1 AND l.id = $2 FOR UPDATE SKIP LOCKED)
                RETURNING s.last_seq, s.user_id, s.forked)
            INSERT INTO %3$s AS m
                (tenant_id, session_id, seq, user_id, created_at, id, role, content, tool_calls, tool_call_id, raw,
                 key_id, sealed, tokens, kind, branch)
            SELECT $1, $2, b.last_seq, b.user_id, $4, $5, $6, $7, $8::jsonb, $9, $10::jsonb, $11, $12, $13, $14, ''main'' FROM b
            RETURNING m.seq, m.created_at, (SELECT b.forked FROM b)', 'cs12_write1_s_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_write1_s_' || v_shard, 'y', false);
            END IF;
            EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L)',
                           'cs12_write1_' || CASE WHEN p_wait THEN 'w_' ELSE 's_' END || v_shard,
                           p_tenant, v_sids[1], v_owners[1], v_now, p_ids[v_at], p_roles[v_at], p_contents[v_at],
                           p_tool_calls[v_at], p_tool_call_ids[v_at], p_raws[v_at], p_key_ids[v_at], p_sealed[v_at],
                           p_tokens[v_at], p_kinds[v_at])
               INTO v_base, v_created, v_isforked;
            v_written := v_base IS NOT NULL;
            IF v_written THEN
                req := NULL;
                session_id := v_sids[1];
                id := p_ids[v_at];
                seq := v_base;
                created_at := v_created;
                outcome := 'i';
                RETURN NEXT;
            END IF;
            v_bumped := CASE WHEN v_written THEN v_sids ELSE '{}' END;
            v_bases := '{}';
            v_holders := '{}';
        ELSIF cardinality(v_sids) = 1 THEN
            IF current_setting('convostore.cs12_bump1_w_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_bump1_w_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, text, bigint, text, timestamptz) AS
            UPDATE %2$s s SET last_seq = s.last_seq + $3, updated_at = $5
             WHERE s.tenant_id = $1 AND s.id = $2 AND ($4 IS NULL OR s.user_id = $4)
            RETURNING s.last_seq - $3, s.user_id, s.forked', 'cs12_bump1_w_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_bump1_w_' || v_shard, 'y', false);
            END IF;
            IF current_setting('convostore.cs12_bump1_s_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_bump1_s_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, text, bigint, text, timestamptz) AS
            UPDATE %2$s s SET last_seq = s.last_seq + $3, updated_at = $5
             WHERE s.tenant_id = $1 AND s.id = $2 AND ($4 IS NULL OR s.user_id = $4)
               AND s.id IN (SELECT l.id FROM %2$s l WHERE l.tenant_id = $1 AND l.id = $2 FOR UPDATE SKIP LOCKED)
            RETURNING s.last_seq - $3, s.user_id, s.forked', 'cs12_bump1_s_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_bump1_s_' || v_shard, 'y', false);
            END IF;
            EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L)',
                           'cs12_bump1_' || CASE WHEN p_wait THEN 'w_' ELSE 's_' END || v_shard,
                           p_tenant, v_sids[1], v_counts[1], v_owners[1], v_now)
               INTO v_base, v_holder, v_isforked;
            v_bumped := CASE WHEN v_base IS NULL THEN '{}' ELSE v_sids END;
            v_bases := CASE WHEN v_base IS NULL THEN '{}' ELSE ARRAY[v_base] END;
            v_holders := CASE WHEN v_base IS NULL THEN '{}' ELSE ARRAY[v_holder] END;
        ELSE
            IF current_setting('convostore.cs12_bump_w_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_bump_w_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, text[], bigint[], text[], timestamptz) AS
            WITH b AS (
                UPDATE %2$s s SET last_seq = s.last_seq + c.n, updated_at = $5
                  FROM unnest($2, $3, $4) AS c(sid, n, owner)
                 WHERE s.tenant_id = $1 AND s.id = ANY ($2) AND s.id = c.sid AND (c.owner IS NULL OR s.user_id = c.owner)
                RETURNING s.id, s.last_seq - c.n AS base, s.user_id, s.forked)
            SELECT coalesce(array_agg(b.id), ''{}''), coalesce(array_agg(b.base), ''{}''), coalesce(array_agg(b.user_id), ''{}''),
                   coalesce(array_agg(b.id) FILTER (WHERE b.forked), ''{}'')
              FROM b', 'cs12_bump_w_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_bump_w_' || v_shard, 'y', false);
            END IF;
            IF current_setting('convostore.cs12_bump_s_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_bump_s_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, text[], bigint[], text[], timestamptz) AS
            WITH b AS (
                UPDATE %2$s s SET last_seq = s.last_seq + c.n, updated_at = $5
                  FROM unnest($2, $3, $4) AS c(sid, n, owner)
                 WHERE s.tenant_id = $1 AND s.id = ANY ($2) AND s.id = c.sid AND (c.owner IS NULL OR s.user_id = c.owner)
                   AND s.id IN (SELECT l.id FROM %2$s l WHERE l.tenant_id = $1 AND l.id = ANY ($2)
                                 ORDER BY l.id FOR UPDATE SKIP LOCKED)
                RETURNING s.id, s.last_seq - c.n AS base, s.user_id, s.forked)
            SELECT coalesce(array_agg(b.id), ''{}''), coalesce(array_agg(b.base), ''{}''), coalesce(array_agg(b.user_id), ''{}''),
                   coalesce(array_agg(b.id) FILTER (WHERE b.forked), ''{}'')
              FROM b', 'cs12_bump_s_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_bump_s_' || v_shard, 'y', false);
            END IF;
            EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L)',
                           'cs12_bump_' || CASE WHEN p_wait THEN 'w_' ELSE 's_' END || v_shard,
                           p_tenant, v_sids, v_counts, v_owners, v_now)
               INTO v_bumped, v_bases, v_holders, v_forked;
        END IF;
        IF cardinality(v_sids) = 1 THEN
            v_forked := CASE WHEN v_isforked THEN v_sids ELSE '{}' END;
        END IF;
        FOR v_round IN 1..2 LOOP
            EXIT WHEN cardinality(v_bumped) = cardinality(v_sids) OR (v_round = 2 AND NOT p_wait);
            SELECT array_agg(c.sid), array_agg(c.n), array_agg(c.owner), array_agg(c.agent)
              INTO v_left, v_lcounts, v_lowners, v_lagents
              FROM unnest(v_sids, v_counts, v_owners, v_agents) AS c(sid, n, owner, agent)
             WHERE c.sid <> ALL (v_bumped);
            IF v_round = 1 THEN
                IF current_setting('convostore.cs12_create_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_create_' || v_shard) THEN
                        EXECUTE format('PREPARE %1$I (text, text[], bigint[], text[], text[], timestamptz) AS
                WITH c AS (
                    INSERT INTO %2$s AS s (tenant_id, id, user_id, agent_name, last_seq, created_at, updated_at)
                    SELECT $1, c.sid, c.owner, c.agent, c.n, $6, $6 FROM unnest($2, $3, $4, $5) AS c(sid, n, owner, agent)
                     WHERE c.agent IS NOT NULL AND c.owner IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM %2$s x WHERE x.tenant_id = $1 AND x.id = c.sid)
                     ORDER BY c.sid
                    ON CONFLICT DO NOTHING
                    RETURNING s.id, s.user_id)
                SELECT coalesce(array_agg(c.id), ''{}''), coalesce(array_agg(c.user_id), ''{}'') FROM c', 'cs12_create_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                            pg_catalog.shard_name('"s".conversation_messages',
                                pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                    END IF;
                    PERFORM set_config('convostore.cs12_create_' || v_shard, 'y', false);
                END IF;
                EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L)', 'cs12_create_' || v_shard,
                               p_tenant, v_left, v_lcounts, v_lowners, v_lagents, v_now)
                   INTO r_ids, r_holders;
                r_bases := array_fill(0::bigint, ARRAY[cardinality(r_ids)]);
                r_forked := '{}';
            ELSE
                IF current_setting('convostore.cs12_bump_w_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_bump_w_' || v_shard) THEN
                        EXECUTE format('PREPARE %1$I (text, text[], bigint[], text[], timestamptz) AS
                WITH b AS (
                    UPDATE %2$s s SET last_seq = s.last_seq + c.n, updated_at = $5
                      FROM unnest($2, $3, $4) AS c(sid, n, owner)
                     WHERE s.tenant_id = $1 AND s.id = ANY ($2) AND s.id = c.sid AND (c.owner IS NULL OR s.user_id = c.owner)
                    RETURNING s.id, s.last_seq - c.n AS base, s.user_id, s.forked)
                SELECT coalesce(array_agg(b.id), ''{}''), coalesce(array_agg(b.base), ''{}''), coalesce(array_agg(b.user_id), ''{}''),
                       coalesce(array_agg(b.id) FILTER (WHERE b.forked), ''{}'')
                  FROM b', 'cs12_bump_w_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                            pg_catalog.shard_name('"s".conversation_messages',
                                pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                    END IF;
                    PERFORM set_config('convostore.cs12_bump_w_' || v_shard, 'y', false);
                END IF;
                EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L)', 'cs12_bump_w_' || v_shard,
                               p_tenant, v_left, v_lcounts, v_lowners, v_now)
                   INTO r_ids, r_bases, r_holders, r_forked;
            END IF;
            v_bumped := v_bumped || r_ids;
            v_bases := v_bases || r_bases;
            v_holders := v_holders || r_holders;
            v_forked := v_forked || r_forked;
        END LOOP;
        IF cardinality(v_forked) > 0 THEN
            -- Forked sessions: 'main' must not be deleted (their rows are locked: no fork or
            -- deletion can interleave). Refused: the whole call rolls back.
            EXECUTE format('SELECT b.session_id FROM %s b WHERE b.tenant_id = $1 AND b.session_id = ANY ($2)'
                           ' AND b.name = ''main'' AND b.deleted_at IS NOT NULL LIMIT 1',
                           pg_catalog.shard_name('"s".conversation_branches',
                               pg_catalog.get_shard_id_for_distribution_column('"s".conversation_branches', v_sids[1])))
               INTO v_sid USING p_tenant, v_forked;
            IF v_sid IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'no_data_found',
                    MESSAGE = format('session %s has no branch main', v_sid);
            END IF;
        END IF;
        IF cardinality(v_bumped) < cardinality(v_sids) THEN
            IF current_setting('convostore.cs12_refuse_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_refuse_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, int[], text[], text[], text[], text[], int[]) AS
            SELECT r.req, r.sid, NULL::text, NULL::bigint, NULL::timestamptz,
                   CASE WHEN s.id IS NULL AND r.agent IS NULL THEN ''n''
                        WHEN s.id IS NULL OR (r.owner IS NOT NULL AND s.user_id <> r.owner) THEN ''o''
                        ELSE ''b'' END
              FROM (SELECT DISTINCT n.req, n.sid, n.owner, n.agent
                      FROM unnest($2, $3, $4, $5) AS n(req, sid, owner, agent) WHERE n.sid = ANY ($6) AND n.req <> ALL ($7)) r
              LEFT JOIN %2$s s ON s.tenant_id = $1 AND s.id = ANY ($6) AND s.id = r.sid', 'cs12_refuse_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_refuse_' || v_shard, 'y', false);
            END IF;
            RETURN QUERY EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L)', 'cs12_refuse_' || v_shard,
                                        p_tenant, p_reqs, p_sessions, p_owners, p_agents,
                                        ARRAY(SELECT x FROM unnest(v_sids) AS x WHERE x <> ALL (v_bumped)), v_done);
        END IF;
        IF v_written OR cardinality(v_bumped) = 0 THEN
            CONTINUE;
        END IF;
        IF a_shards[1] <> a_shards[cardinality(a_shards)] OR cardinality(v_done) > 0 THEN  -- the shard's messages
            SELECT array_agg(n.sid ORDER BY n.ord), array_agg(n.id ORDER BY n.ord), array_agg(n.role ORDER BY n.ord),
                   array_agg(n.content ORDER BY n.ord), array_agg(n.tool_calls ORDER BY n.ord),
                   array_agg(n.tool_call_id ORDER BY n.ord), array_agg(n.raw ORDER BY n.ord),
                   array_agg(n.key_id ORDER BY n.ord), array_agg(n.sealed ORDER BY n.ord),
                   array_agg(n.tokens ORDER BY n.ord), array_agg(n.kind ORDER BY n.ord)
              INTO m_sessions, m_ids, m_roles, m_contents, m_tool_calls, m_tool_call_ids, m_raws, m_key_ids,
                   m_sealed, m_tokens, m_kinds
              FROM unnest(p_reqs, p_sessions, p_ids, p_roles, p_contents, p_tool_calls, p_tool_call_ids, p_raws,
                          p_key_ids, p_sealed, p_tokens, p_kinds) WITH ORDINALITY
                   AS n(req, sid, id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, tokens, kind, ord)
             WHERE n.sid = ANY (v_sids) AND n.req <> ALL (v_done);
        END IF;
        IF cardinality(m_ids) = 1 THEN
            IF current_setting('convostore.cs12_insert1_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_insert1_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, text, bigint, text, timestamptz, text, text, text, text, text, text, text, bytea, int, text) AS
            INSERT INTO %3$s AS m
                (tenant_id, session_id, seq, user_id, created_at, id, role, content, tool_calls, tool_call_id, raw,
                 key_id, sealed, tokens, kind, branch)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11::jsonb, $12, $13, $14, $15, ''main'')
            RETURNING NULL::int, m.session_id::text, m.id::text, m.seq, m.created_at, ''i''::text', 'cs12_insert1_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_insert1_' || v_shard, 'y', false);
            END IF;
            RETURN QUERY EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L)',
                                        'cs12_insert1_' || v_shard, p_tenant, v_bumped[1], v_bases[1] + 1,
                                        v_holders[1], v_now, m_ids[1], m_roles[1], m_contents[1], m_tool_calls[1],
                                        m_tool_call_ids[1], m_raws[1], m_key_ids[1], m_sealed[1], m_tokens[1],
                                        m_kinds[1]);
        ELSE
            IF current_setting('convostore.cs12_insert_' || v_shard, true) IS DISTINCT FROM 'y' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = 'cs12_insert_' || v_shard) THEN
                    EXECUTE format('PREPARE %1$I (text, timestamptz, text[], text[], text[], text[], text[], text[], text[], text[], bytea[], int[], text[], text[], bigint[], text[]) AS
            INSERT INTO %3$s AS m
                (tenant_id, session_id, seq, id, user_id, role, content, tool_calls, tool_call_id, raw, created_at,
                 key_id, sealed, branch, tokens, kind)
            SELECT $1, b.sid, b.base + row_number() OVER (PARTITION BY b.sid ORDER BY n.ord), n.id, b.holder,
                   n.role, n.content, n.tool_calls::jsonb, n.tool_call_id, n.raw::jsonb, $2, n.key_id, n.sealed,
                   ''main'', n.tokens, n.kind
              FROM unnest($3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) WITH ORDINALITY
                   AS n(sid, id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, tokens, kind, ord)
              JOIN unnest($14, $15, $16) AS b(sid, base, holder) ON b.sid = n.sid
            RETURNING NULL::int, m.session_id::text, m.id::text, m.seq, m.created_at, ''i''::text', 'cs12_insert_' || v_shard, pg_catalog.shard_name('"s".agent_sessions', v_shard),
                        pg_catalog.shard_name('"s".conversation_messages',
                            pg_catalog.get_shard_id_for_distribution_column('"s".conversation_messages', v_sids[1])));
                END IF;
                PERFORM set_config('convostore.cs12_insert_' || v_shard, 'y', false);
            END IF;
            RETURN QUERY EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L)',
                                        'cs12_insert_' || v_shard, p_tenant, v_now, m_sessions, m_ids, m_roles,
                                        m_contents, m_tool_calls, m_tool_call_ids, m_raws, m_key_ids, m_sealed,
                                        m_tokens, m_kinds, v_bumped, v_bases, v_holders);
        END IF;
    END LOOP;
END
$fn$;
