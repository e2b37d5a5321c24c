-- A session's messages, oldest first, each with the session's owner. No row: no such session.
-- With p_user, a session of another user yields one row holding its owner and no message.
--
-- The view is a branch's (p_branch; 'main' unless forked) with what compaction replaced
-- hidden (unless p_raw). Below seq p_below, the window is the latest p_turns turns (a turn
-- starts at a user message), cut further to the latest messages within p_budget tokens, and
-- to the latest p_limit messages (or, paging forwards, the first p_limit after seq p_above);
-- with p_pinned, the view's system and developer messages before the window come too (their
-- tokens counted first). A session never forked nor compacted (or read raw) is read without
-- working out a line: its rows are all its view. The window's statements are written twice,
-- once for each of those two cases (the rows of the session; the rows of the view), and each
-- in two shapes (with and without the pinned messages).
--
-- A branch's line of rows: its own rows, then its parent's up to the fork, and so on to
-- 'main' (v_names, the branches, and v_limits, the last seq each contributes); rows at or
-- below v_floor were cleared from the branch's view; a branch that does not exist or was
-- deleted raises no_data_found (P0002). A row is in the view when it is in the line, above
-- the floor, in no range a summary stands for (v_from, v_to) and no marker of an empty
-- summary (kind 'convostore.empty_summary'). A token count for rows written without one
-- (before counts were kept): octet_length(coalesce(raw::text, content)) / 4 + 1. A sealed
-- row's content column holds a digest the reader has no use for: it is not sent.
--
-- Its statements are planned once per connection (generic plans): every one of them reads
-- one session's rows through an index, whatever the parameters, and planning them on every
-- call (which PostgreSQL may keep doing when a custom plan looks cheaper) cost more than the
-- reads of a last-20 or a window. (Not on distributed tables, where Citus plans each
-- statement from its values: see fit_to_citus.sql.)
-- Every read in it is the session's key read backwards, newest first, as far as it needs,
-- but for the pinned messages, read through their own partial index.
-- Bitmap scans are off in it: under row-level security the policy's conditions made a
-- reused plan estimate one row per session and read a whole long session through a bitmap
-- and a sort to return its last 20. The reads of a window's start, which go as far as the
-- window reaches, say LIMIT v_below (true: no more rows lie below it): a query without a
-- LIMIT is planned to be read to its end, which a sort of the whole session can win.
CREATE OR REPLACE FUNCTION {s}.convostore_read(
    p_tenant text, p_session text, p_user text, p_below bigint, p_limit bigint,
    p_branch text, p_raw boolean, p_turns bigint, p_budget bigint, p_pinned boolean, p_above bigint
) RETURNS TABLE (owner text, id text, seq bigint, role text, content text, tool_calls jsonb,
                 tool_call_id text, raw jsonb, created_at timestamptz, key_id text, sealed bytea,
                 branch text, covers_from bigint, covers_to bigint)
LANGUAGE plpgsql SET enable_bitmapscan = off SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    v_owner text;
    v_forked boolean;
    v_compacted boolean;
    v_below bigint := coalesce(p_below, 9223372036854775807);
    v_cut bigint := 0;
    v_start bigint;
    v_pin bigint;
    v_used bigint;
    v_users bigint;
    v_fit bigint;
    v_turns bigint;
    v_kept bigint;
    v_pinned boolean;
    v_row record;
    v_names text[];
    v_limits bigint[];
    v_floor bigint;
    v_from bigint[];
    v_to bigint[];
    v_name text;
    v_limit bigint;
    v_parent text;
    v_fork bigint;
    v_deleted timestamptz;
    v_cleared bigint;
BEGIN
    PERFORM set_config('convostore.tenant_id', p_tenant, true),
            set_config('convostore.user_id', coalesce(p_user, '*'), true);
    SELECT s.user_id, s.forked, s.compacted INTO v_owner, v_forked, v_compacted
      FROM {s}.agent_sessions s WHERE s.tenant_id = p_tenant AND s.id = p_session;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_user IS NOT NULL AND v_owner <> p_user THEN
        RETURN QUERY SELECT v_owner, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::jsonb,
                            NULL::text, NULL::jsonb, NULL::timestamptz, NULL::text, NULL::bytea,
                            NULL::text, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF NOT v_forked AND p_branch = 'main' AND (p_raw OR NOT v_compacted) THEN
        IF p_limit IS NULL AND p_turns IS NULL AND p_budget IS NULL THEN
            RETURN QUERY
            SELECT v_owner, m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
              FROM {s}.conversation_messages m
             WHERE m.tenant_id = p_tenant AND m.session_id = p_session AND m.seq < v_below
               AND m.seq > coalesce(p_above, 0)
             ORDER BY m.seq;
            RETURN;
        END IF;
        IF p_above IS NOT NULL THEN  -- paging forwards: the first p_limit after seq p_above
            RETURN QUERY
            SELECT v_owner, m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
              FROM {s}.conversation_messages m
             WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > p_above AND m.seq < v_below
             ORDER BY m.seq
             LIMIT p_limit;
            RETURN;
        END IF;
        IF p_turns IS NULL AND p_budget IS NULL THEN
            RETURN QUERY
            SELECT v_owner, x.* FROM (
                SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                  FROM {s}.conversation_messages m
                 WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below
                 ORDER BY m.seq DESC
                 LIMIT p_limit
            ) x ORDER BY x.seq;
            RETURN;
        END IF;
        -- One statement for the window, in one of two shapes: with the pinned messages (their
        -- tokens and those before the window), or, when the session holds none (one probe of
        -- their index), without, which spares the reads and the plan nodes they cost.
        v_pinned := p_pinned AND EXISTS (SELECT 1 FROM {s}.conversation_messages m WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.role IN ('system', 'developer'));
        IF p_budget IS NULL THEN
            IF v_pinned THEN
            RETURN QUERY
            WITH u AS (SELECT m.seq FROM {s}.conversation_messages m
                        WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below AND m.role = 'user'
                        ORDER BY m.seq DESC OFFSET greatest(p_turns - 1, 0) LIMIT 1),
                 cut AS (SELECT CASE WHEN p_turns = 0 THEN v_below
                                     WHEN (SELECT p.kind FROM {s}.conversation_messages p
                                            WHERE p.session_id = p_session AND p.tenant_id = p_tenant AND p.seq < (SELECT seq FROM u)
                                            ORDER BY p.seq DESC LIMIT 1) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM u), 0) END AS seq)
            
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
                UNION ALL
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE v_pinned AND (SELECT seq FROM cut) > 0 AND m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < least((SELECT seq FROM cut), v_below) AND m.role IN ('system', 'developer'))
            ) x ORDER BY x.seq;
            ELSE
            RETURN QUERY
            WITH u AS (SELECT m.seq FROM {s}.conversation_messages m
                        WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below AND m.role = 'user'
                        ORDER BY m.seq DESC OFFSET greatest(p_turns - 1, 0) LIMIT 1),
                 cut AS (SELECT CASE WHEN p_turns = 0 THEN v_below
                                     WHEN (SELECT p.kind FROM {s}.conversation_messages p
                                            WHERE p.session_id = p_session AND p.tenant_id = p_tenant AND p.seq < (SELECT seq FROM u)
                                            ORDER BY p.seq DESC LIMIT 1) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM u), 0) END AS seq)
            
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
            ) x ORDER BY x.seq;
            END IF;
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
        IF v_pinned THEN
            RETURN QUERY
            WITH pin AS (
                    SELECT coalesce(sum(coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1)), 0) AS tokens FROM {s}.conversation_messages m
                     WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below AND m.role IN ('system', 'developer')
                 ),
                 stop AS (
                    SELECT x.seq, x.kind FROM (
                        SELECT m.seq, m.kind,
                               sum(CASE WHEN m.role IN ('system', 'developer') THEN 0 ELSE coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1) END) OVER w AS used,
                               count(*) FILTER (WHERE m.role = 'user') OVER w - (m.role = 'user')::int AS newer_users
                          FROM {s}.conversation_messages m
                         WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below
                        WINDOW w AS (ORDER BY m.seq DESC ROWS UNBOUNDED PRECEDING)
                         ORDER BY m.seq DESC LIMIT v_below) x
                     WHERE x.used > p_budget - (SELECT tokens FROM pin) OR x.newer_users >= p_turns
                     LIMIT 1
                 ),
                 cut AS (SELECT CASE WHEN (SELECT kind FROM stop) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM stop) + 1, 0) END AS seq)
            
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
                UNION ALL
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE v_pinned AND (SELECT seq FROM cut) > 0 AND m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < least((SELECT seq FROM cut), v_below) AND m.role IN ('system', 'developer'))
            ) x ORDER BY x.seq;
        ELSE
            RETURN QUERY
            WITH 
                 stop AS (
                    SELECT x.seq, x.kind FROM (
                        SELECT m.seq, m.kind,
                               sum(coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1)) OVER w AS used,
                               count(*) FILTER (WHERE m.role = 'user') OVER w - (m.role = 'user')::int AS newer_users
                          FROM {s}.conversation_messages m
                         WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below
                        WINDOW w AS (ORDER BY m.seq DESC ROWS UNBOUNDED PRECEDING)
                         ORDER BY m.seq DESC LIMIT v_below) x
                     WHERE x.used > p_budget OR x.newer_users >= p_turns
                     LIMIT 1
                 ),
                 cut AS (SELECT CASE WHEN (SELECT kind FROM stop) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM stop) + 1, 0) END AS seq)
            
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
            ) x ORDER BY x.seq;
        END IF;
        IF FOUND THEN  -- (none: the window is empty, or starts after a reasoning item)
            RETURN;
        END IF;
        -- Row by row, newest first, just as far as the window reaches: a row is kept while
        -- the tokens so far (after the pinned messages') fit and fewer than p_turns user
        -- messages are newer. The window starts at the oldest kept row that does not follow
        -- a reasoning item (that item and the one after it stay together).
        v_pin := 0;
        IF p_budget IS NOT NULL AND v_pinned THEN
            SELECT coalesce(sum(coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1)), 0) INTO v_pin FROM {s}.conversation_messages m
             WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below AND m.role IN ('system', 'developer');
        END IF;
        v_used := 0;
        v_users := 0;
        v_fit := coalesce(p_budget - v_pin, 9223372036854775807);
        v_turns := coalesce(p_turns, 9223372036854775807);
        FOR v_row IN
            SELECT m.seq, CASE WHEN v_pinned AND m.role IN ('system', 'developer') THEN 0 ELSE coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1) END AS tokens,
                   (m.role = 'user')::int AS user_message, coalesce(m.kind = 'reasoning', false) AS reasoning
              FROM {s}.conversation_messages m
             WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below ORDER BY m.seq DESC LIMIT v_below
        LOOP
            IF NOT v_row.reasoning THEN
                v_start := coalesce(v_kept, v_start);  -- the row kept before this one may start it
            END IF;
            v_used := v_used + v_row.tokens;
            EXIT WHEN v_used > v_fit OR v_users >= v_turns;
            v_users := v_users + v_row.user_message;
            v_kept := v_row.seq;
        END LOOP;
        IF FOUND AND v_kept = v_row.seq THEN  -- every row kept: the oldest starts it
            v_start := v_kept;
        END IF;
        v_cut := coalesce(v_start, v_below);
        RETURN QUERY
        WITH cut AS (SELECT v_cut AS seq)
        
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
                UNION ALL
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE v_pinned AND (SELECT seq FROM cut) > 0 AND m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq < least((SELECT seq FROM cut), v_below) AND m.role IN ('system', 'developer'))
            ) x ORDER BY x.seq;

        RETURN;
    END IF;
    v_names := ARRAY['main'];
    v_limits := ARRAY[9223372036854775807];
    v_floor := 0;
    IF v_forked THEN
        v_names := '{}';
        v_limits := '{}';
        v_name := p_branch;
        v_limit := 9223372036854775807;
        LOOP
            SELECT b.parent, b.fork_seq, b.deleted_at, b.cleared_to INTO v_parent, v_fork, v_deleted, v_cleared
              FROM {s}.conversation_branches b
             WHERE b.session_id = p_session AND b.tenant_id = p_tenant AND b.name = v_name;
            IF (NOT FOUND AND v_name <> 'main') OR (v_name = p_branch AND v_deleted IS NOT NULL)
               OR cardinality(v_names) > 1000 THEN
                RAISE EXCEPTION USING ERRCODE = 'no_data_found',
                    MESSAGE = format('session %s has no branch %s', p_session, p_branch);
            END IF;
            IF v_name = p_branch THEN
                v_floor := coalesce(v_cleared, 0);
            END IF;
            v_names := v_names || v_name::text;
            v_limits := v_limits || v_limit;
            EXIT WHEN v_parent IS NULL;
            v_limit := least(v_limit, v_fork);
            v_name := v_parent;
        END LOOP;
    ELSIF p_branch <> 'main' THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = format('session %s has no branch %s', p_session, p_branch);
    END IF;
    -- What compaction hides from this line: the ranges its summaries stand for. A later
    -- summary's range holds the ranges of the summaries it replaced, so hiding every row in
    -- any range of the line is the compacted view.
    IF v_compacted AND NOT p_raw THEN
        SELECT array_agg(m.covers_from), array_agg(m.covers_to) INTO v_from, v_to
          FROM {s}.conversation_messages m
         WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.covers_from IS NOT NULL
           AND m.seq > v_floor AND m.seq <= v_limits[array_position(v_names, m.branch::text)];
    END IF;

        IF p_above IS NOT NULL THEN  -- paging forwards: the first p_limit after seq p_above
            RETURN QUERY
            SELECT v_owner, m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
              FROM {s}.conversation_messages m
             WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq > p_above AND m.seq < v_below
             ORDER BY m.seq
             LIMIT p_limit;
            RETURN;
        END IF;
        IF p_turns IS NULL AND p_budget IS NULL THEN
            RETURN QUERY
            SELECT v_owner, x.* FROM (
                SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                  FROM {s}.conversation_messages m
                 WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below
                 ORDER BY m.seq DESC
                 LIMIT p_limit
            ) x ORDER BY x.seq;
            RETURN;
        END IF;
        -- One statement for the window, in one of two shapes: with the pinned messages (their
        -- tokens and those before the window), or, when the session holds none (one probe of
        -- their index), without, which spares the reads and the plan nodes they cost.
        v_pinned := p_pinned AND EXISTS (SELECT 1 FROM {s}.conversation_messages m WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.role IN ('system', 'developer'));
        IF p_budget IS NULL THEN
            IF v_pinned THEN
            RETURN QUERY
            WITH u AS (SELECT m.seq FROM {s}.conversation_messages m
                        WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below AND m.role = 'user'
                        ORDER BY m.seq DESC OFFSET greatest(p_turns - 1, 0) LIMIT 1),
                 cut AS (SELECT CASE WHEN p_turns = 0 THEN v_below
                                     WHEN (SELECT p.kind FROM {s}.conversation_messages p
                                            WHERE p.session_id = p_session AND p.tenant_id = p_tenant AND p.seq > v_floor
           AND p.seq <= v_limits[array_position(v_names, p.branch::text)]
           AND p.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE p.seq BETWEEN r.f AND r.t)) AND p.seq < (SELECT seq FROM u)
                                            ORDER BY p.seq DESC LIMIT 1) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM u), 0) END AS seq)
            
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
                UNION ALL
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE v_pinned AND (SELECT seq FROM cut) > 0 AND m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < least((SELECT seq FROM cut), v_below) AND m.role IN ('system', 'developer'))
            ) x ORDER BY x.seq;
            ELSE
            RETURN QUERY
            WITH u AS (SELECT m.seq FROM {s}.conversation_messages m
                        WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below AND m.role = 'user'
                        ORDER BY m.seq DESC OFFSET greatest(p_turns - 1, 0) LIMIT 1),
                 cut AS (SELECT CASE WHEN p_turns = 0 THEN v_below
                                     WHEN (SELECT p.kind FROM {s}.conversation_messages p
                                            WHERE p.session_id = p_session AND p.tenant_id = p_tenant AND p.seq > v_floor
           AND p.seq <= v_limits[array_position(v_names, p.branch::text)]
           AND p.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE p.seq BETWEEN r.f AND r.t)) AND p.seq < (SELECT seq FROM u)
                                            ORDER BY p.seq DESC LIMIT 1) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM u), 0) END AS seq)
            
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
            ) x ORDER BY x.seq;
            END IF;
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
        IF v_pinned THEN
            RETURN QUERY
            WITH pin AS (
                    SELECT coalesce(sum(coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1)), 0) AS tokens FROM {s}.conversation_messages m
                     WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below AND m.role IN ('system', 'developer')
                 ),
                 stop AS (
                    SELECT x.seq, x.kind FROM (
                        SELECT m.seq, m.kind,
                               sum(CASE WHEN m.role IN ('system', 'developer') THEN 0 ELSE coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1) END) OVER w AS used,
                               count(*) FILTER (WHERE m.role = 'user') OVER w - (m.role = 'user')::int AS newer_users
                          FROM {s}.conversation_messages m
                         WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below
                        WINDOW w AS (ORDER BY m.seq DESC ROWS UNBOUNDED PRECEDING)
                         ORDER BY m.seq DESC LIMIT v_below) x
                     WHERE x.used > p_budget - (SELECT tokens FROM pin) OR x.newer_users >= p_turns
                     LIMIT 1
                 ),
                 cut AS (SELECT CASE WHEN (SELECT kind FROM stop) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM stop) + 1, 0) END AS seq)
            
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
                UNION ALL
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE v_pinned AND (SELECT seq FROM cut) > 0 AND m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < least((SELECT seq FROM cut), v_below) AND m.role IN ('system', 'developer'))
            ) x ORDER BY x.seq;
        ELSE
            RETURN QUERY
            WITH 
                 stop AS (
                    SELECT x.seq, x.kind FROM (
                        SELECT m.seq, m.kind,
                               sum(coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1)) OVER w AS used,
                               count(*) FILTER (WHERE m.role = 'user') OVER w - (m.role = 'user')::int AS newer_users
                          FROM {s}.conversation_messages m
                         WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below
                        WINDOW w AS (ORDER BY m.seq DESC ROWS UNBOUNDED PRECEDING)
                         ORDER BY m.seq DESC LIMIT v_below) x
                     WHERE x.used > p_budget OR x.newer_users >= p_turns
                     LIMIT 1
                 ),
                 cut AS (SELECT CASE WHEN (SELECT kind FROM stop) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM stop) + 1, 0) END AS seq)
            
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
            ) x ORDER BY x.seq;
        END IF;
        IF FOUND THEN  -- (none: the window is empty, or starts after a reasoning item)
            RETURN;
        END IF;
        -- Row by row, newest first, just as far as the window reaches: a row is kept while
        -- the tokens so far (after the pinned messages') fit and fewer than p_turns user
        -- messages are newer. The window starts at the oldest kept row that does not follow
        -- a reasoning item (that item and the one after it stay together).
        v_pin := 0;
        IF p_budget IS NOT NULL AND v_pinned THEN
            SELECT coalesce(sum(coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1)), 0) INTO v_pin FROM {s}.conversation_messages m
             WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below AND m.role IN ('system', 'developer');
        END IF;
        v_used := 0;
        v_users := 0;
        v_fit := coalesce(p_budget - v_pin, 9223372036854775807);
        v_turns := coalesce(p_turns, 9223372036854775807);
        FOR v_row IN
            SELECT m.seq, CASE WHEN v_pinned AND m.role IN ('system', 'developer') THEN 0 ELSE coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1) END AS tokens,
                   (m.role = 'user')::int AS user_message, coalesce(m.kind = 'reasoning', false) AS reasoning
              FROM {s}.conversation_messages m
             WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below ORDER BY m.seq DESC LIMIT v_below
        LOOP
            IF NOT v_row.reasoning THEN
                v_start := coalesce(v_kept, v_start);  -- the row kept before this one may start it
            END IF;
            v_used := v_used + v_row.tokens;
            EXIT WHEN v_used > v_fit OR v_users >= v_turns;
            v_users := v_users + v_row.user_message;
            v_kept := v_row.seq;
        END LOOP;
        IF FOUND AND v_kept = v_row.seq THEN  -- every row kept: the oldest starts it
            v_start := v_kept;
        END IF;
        v_cut := coalesce(v_start, v_below);
        RETURN QUERY
        WITH cut AS (SELECT v_cut AS seq)
        
            SELECT v_owner, x.* FROM (
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < v_below AND m.seq >= (SELECT seq FROM cut)
                  ORDER BY m.seq DESC
                  LIMIT p_limit)
                UNION ALL
                (SELECT m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to
                   FROM {s}.conversation_messages m
                  WHERE v_pinned AND (SELECT seq FROM cut) > 0 AND m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq < least((SELECT seq FROM cut), v_below) AND m.role IN ('system', 'developer'))
            ) x ORDER BY x.seq;

END
$fn$;
