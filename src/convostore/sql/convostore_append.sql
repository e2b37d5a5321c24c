-- Every append is one call of this function: one round trip, one commit, whether it carries
-- one caller's batch or many callers' batches for many sessions (coalesced).
--
-- * Order: each session's row is updated to allocate the batch's seq range (last_seq) and
--   stays locked until commit, so seq is gap-free and in commit order per session.
-- * Exactly once: ids come from the client. With p_probe (a retry, or ids the caller chose),
--   a request with a stored id is a replay: its stored rows are returned ('r', or 'c' where
--   the id holds another message) and nothing is written. Without p_probe a reused id fails
--   the unique index, which rolls the whole call back.
-- * Ownership in the same call: a request's owner (if given) must own the session; with an
--   agent, an absent session is created on first write.
-- * With p_wait false (a coalesced batch), rows other transactions hold are skipped and their
--   requests reported busy ('b') instead of stalling the whole batch; 'n' is no such session,
--   'o' another user's.
-- * p_route is a session of the batch: a sharded database routes the call by it, and the
--   batch only holds sessions of that session's shard.
-- * Branches: each request writes one branch of its session (p_branches, per row). In a
--   session that was ever forked, or for a branch other than 'main', the branch must exist
--   and not be deleted, checked under the session rows' locks; otherwise the whole call
--   fails (no_data_found), and a coalesced batch is sent again request by request.
-- convostore_append_sharded takes the same arguments and returns the same rows.
CREATE OR REPLACE FUNCTION {s}.convostore_append(
    p_tenant text, p_route text, p_scope_user text, p_probe boolean, p_wait boolean,
    p_reqs int[], p_sessions text[], p_owners text[], p_agents text[], p_branches text[],
    p_ids text[], p_roles text[], p_contents text[], p_tool_calls text[], p_tool_call_ids text[], p_raws text[],
    p_key_ids text[], p_sealed bytea[], p_tokens int[], p_kinds text[]
) RETURNS TABLE (req int, session_id text, id text, seq bigint, created_at timestamptz, outcome text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_now timestamptz := now();
    v_all text[];  -- every session of the call (filters on it let a sharded table prune to one shard)
    v_done int[] := '{}';
    v_sessions text[];
    v_counts bigint[];
    v_owners text[];
    v_agents text[];
    v_bumped text[] := '{}';
    v_bases bigint[] := '{}';
    v_holders text[] := '{}';
    v_forked boolean := false;
    v_round int;
    v_req int;
    v_sid text;
    v_first text;
    v_base bigint;
    v_holder text;
    v_found boolean;
BEGIN
    PERFORM set_config('convostore.tenant_id', p_tenant, true),
            set_config('convostore.user_id', coalesce(p_scope_user, '*'), true);
    IF p_reqs[1] = p_reqs[cardinality(p_reqs)] THEN
        -- One request (a lone append, or a batch of one): the same steps as below, each a
        -- statement keyed by one session id (=, not ANY or a join with unnest), which a
        -- sharded database runs on the session's shard without planning a distributed query.
        v_sid := p_sessions[1];
        IF p_probe THEN
            PERFORM 1 FROM {s}.conversation_messages x
              WHERE x.session_id = v_sid AND x.tenant_id = p_tenant AND x.id = p_ids[1];
            IF FOUND THEN
                RETURN QUERY
                SELECT p_reqs[1], m.session_id::text, m.id::text, m.seq, m.created_at,
                       CASE WHEN (m.role, m.content, m.tool_calls, m.tool_call_id, m.raw)
                                 IS NOT DISTINCT FROM (n.role, n.content, n.tool_calls::jsonb, n.tool_call_id,
                                                       n.raw::jsonb)
                            THEN 'r' ELSE 'c' END
                  FROM {s}.conversation_messages m
                  JOIN unnest(p_ids, p_roles, p_contents, p_tool_calls, p_tool_call_ids, p_raws)
                       AS n(id, role, content, tool_calls, tool_call_id, raw) ON n.id = m.id
                 WHERE m.session_id = v_sid AND m.tenant_id = p_tenant AND m.id = ANY (p_ids);
                RETURN;
            END IF;
        END IF;
        FOR v_round IN 1..2 LOOP
            v_found := p_wait;
            IF NOT p_wait THEN  -- skip the row if another transaction holds it
                PERFORM 1 FROM {s}.agent_sessions l WHERE l.tenant_id = p_tenant AND l.id = v_sid
                   FOR UPDATE SKIP LOCKED;
                v_found := FOUND;
            END IF;
            IF v_found THEN
                UPDATE {s}.agent_sessions s
                   SET last_seq = s.last_seq + cardinality(p_ids), updated_at = v_now
                 WHERE s.tenant_id = p_tenant AND s.id = v_sid AND (p_owners[1] IS NULL OR s.user_id = p_owners[1])
                RETURNING s.last_seq - cardinality(p_ids), s.user_id, s.forked INTO v_base, v_holder, v_forked;
                v_found := FOUND;
            END IF;
            EXIT WHEN v_found OR v_round = 2 OR p_agents[1] IS NULL OR p_owners[1] IS NULL;
            -- Create on first write; a concurrent creator may win the race, and the second
            -- round then waits for its row.
            INSERT INTO {s}.agent_sessions AS s (tenant_id, id, user_id, agent_name, last_seq, created_at, updated_at)
            VALUES (p_tenant, v_sid, p_owners[1], p_agents[1], cardinality(p_ids), v_now, v_now)
            ON CONFLICT DO NOTHING
            RETURNING 0::bigint, s.user_id, false INTO v_base, v_holder, v_forked;
            v_found := FOUND;
            EXIT WHEN v_found OR NOT p_wait;
        END LOOP;
        IF NOT v_found THEN
            -- No such session ('n'), another user's ('o'), or held by another transaction ('b').
            SELECT x.user_id INTO v_holder FROM {s}.agent_sessions x WHERE x.tenant_id = p_tenant AND x.id = v_sid;
            RETURN QUERY SELECT p_reqs[1], v_sid, NULL::text, NULL::bigint, NULL::timestamptz,
                                CASE WHEN NOT FOUND AND p_agents[1] IS NULL THEN 'n'
                                     WHEN NOT FOUND OR (p_owners[1] IS NOT NULL AND v_holder <> p_owners[1]) THEN 'o'
                                     ELSE 'b' END;
            RETURN;
        END IF;
        IF v_forked OR p_branches[1] <> 'main' THEN
            -- The branch must exist (or be 'main') and not be deleted.
            SELECT b.deleted_at IS NOT NULL INTO v_found FROM {s}.conversation_branches b
             WHERE b.session_id = v_sid AND b.tenant_id = p_tenant AND b.name = p_branches[1];
            IF (FOUND AND v_found) OR (NOT FOUND AND p_branches[1] <> 'main') THEN
                RAISE EXCEPTION USING ERRCODE = 'no_data_found',
                    MESSAGE = format('session %s has no branch %s', v_sid, p_branches[1]);
            END IF;
        END IF;
        IF cardinality(p_ids) = 1 THEN
            RETURN QUERY
            INSERT INTO {s}.conversation_messages AS m
                (tenant_id, session_id, seq, id, user_id, role, content, tool_calls, tool_call_id, raw, created_at,
                 key_id, sealed, branch, tokens, kind)
            VALUES (p_tenant, v_sid, v_base + 1, p_ids[1], v_holder, p_roles[1], p_contents[1],
                    p_tool_calls[1]::jsonb, p_tool_call_ids[1], p_raws[1]::jsonb, v_now, p_key_ids[1], p_sealed[1],
                    p_branches[1], p_tokens[1], p_kinds[1])
            RETURNING NULL::int, m.session_id::text, m.id::text, m.seq, m.created_at, 'i'::text;
        ELSE
            RETURN QUERY
            INSERT INTO {s}.conversation_messages AS m
                (tenant_id, session_id, seq, id, user_id, role, content, tool_calls, tool_call_id, raw, created_at,
                 key_id, sealed, branch, tokens, kind)
            SELECT p_tenant, v_sid, v_base + n.ord, n.id, v_holder, n.role, n.content, n.tool_calls::jsonb,
                   n.tool_call_id, n.raw::jsonb, v_now, n.key_id, n.sealed, n.branch, n.tokens, n.kind
              FROM unnest(p_ids, p_roles, p_contents, p_tool_calls, p_tool_call_ids, p_raws, p_key_ids, p_sealed,
                          p_branches, p_tokens, p_kinds)
                   WITH ORDINALITY
                   AS n(id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, branch, tokens, kind, ord)
            RETURNING NULL::int, m.session_id::text, m.id::text, m.seq, m.created_at, 'i'::text;
        END IF;
        RETURN;
    END IF;
    IF p_reqs[1] = p_reqs[cardinality(p_reqs)] THEN
        v_all := ARRAY[p_sessions[1]];
    ELSE
        v_all := ARRAY(SELECT DISTINCT unnest(p_sessions));
    END IF;
    IF p_probe THEN
        -- A request whose first id is stored was committed before (its acknowledgement was
        -- lost; a request is stored whole or not at all): return its stored rows, 'r' where
        -- identical, 'c' where the id holds another message, and write nothing for it. One
        -- keyed lookup per request, so the plan stays an index probe whatever the statistics.
        FOR v_req, v_sid, v_first IN
            SELECT DISTINCT ON (n.req) n.req, n.sid, n.id
              FROM unnest(p_reqs, p_sessions, p_ids) WITH ORDINALITY AS n(req, sid, id, ord)
             ORDER BY n.req, n.ord
        LOOP
            PERFORM 1 FROM {s}.conversation_messages x
              WHERE x.session_id = v_sid AND x.tenant_id = p_tenant AND x.id = v_first;
            IF FOUND THEN
                v_done := v_done || v_req;
                RETURN QUERY
                SELECT n.req, m.session_id::text, m.id::text, m.seq, m.created_at,
                       CASE WHEN (m.role, m.content, m.tool_calls, m.tool_call_id, m.raw)
                                 IS NOT DISTINCT FROM (n.role, n.content, n.tool_calls::jsonb, n.tool_call_id,
                                                       n.raw::jsonb)
                            THEN 'r' ELSE 'c' END
                  FROM {s}.conversation_messages m
                  JOIN unnest(p_reqs, p_ids, p_roles, p_contents, p_tool_calls, p_tool_call_ids, p_raws)
                       AS n(req, id, role, content, tool_calls, tool_call_id, raw) ON n.req = v_req AND n.id = m.id
                 WHERE m.session_id = v_sid AND m.tenant_id = p_tenant
                   AND m.id = ANY (ARRAY(SELECT r.id FROM unnest(p_reqs, p_ids) AS r(req, id) WHERE r.req = v_req));
            END IF;
        END LOOP;
    END IF;
    IF p_reqs[1] = p_reqs[cardinality(p_reqs)] AND cardinality(v_done) = 0 THEN
        -- One request (the lone append): no grouping needed.
        v_sessions := v_all;
        v_counts := ARRAY[cardinality(p_ids)];
        v_owners := ARRAY[p_owners[1]];
        v_agents := ARRAY[p_agents[1]];
    ELSE
        SELECT array_agg(c.sid ORDER BY c.sid), array_agg(c.n ORDER BY c.sid),
               array_agg(c.owner ORDER BY c.sid), array_agg(c.agent ORDER BY c.sid)
          INTO v_sessions, v_counts, v_owners, v_agents
          FROM (SELECT n.sid, count(*) AS n, min(n.owner) AS owner, min(n.agent) AS agent
                  FROM unnest(p_reqs, p_sessions, p_owners, p_agents) AS n(req, sid, owner, agent)
                 WHERE n.req <> ALL (v_done) GROUP BY n.sid) c;
        IF v_sessions IS NULL THEN
            RETURN;
        END IF;
    END IF;
    FOR v_round IN 1..2 LOOP
        -- Allocate each session's seq range and keep its row locked till commit. Waiting
        -- (a lone request), or skipping rows other transactions hold (a coalesced batch,
        -- whose skipped requests are reported busy and sent again alone).
        IF p_wait THEN
            WITH bumped AS (
                UPDATE {s}.agent_sessions s
                   SET last_seq = s.last_seq + c.n, updated_at = v_now
                  FROM unnest(v_sessions, v_counts, v_owners) AS c(sid, n, owner)
                 WHERE s.tenant_id = p_tenant AND s.id = ANY (v_sessions) AND s.id = c.sid
                   AND c.sid <> ALL (v_bumped) AND (c.owner IS NULL OR s.user_id = c.owner)
                RETURNING s.id, s.last_seq - c.n AS base, s.user_id, s.forked
            )
            SELECT v_bumped || coalesce(array_agg(b.id), '{}'), v_bases || coalesce(array_agg(b.base), '{}'),
                   v_holders || coalesce(array_agg(b.user_id), '{}'), v_forked OR coalesce(bool_or(b.forked), false)
              INTO v_bumped, v_bases, v_holders, v_forked FROM bumped b;
        ELSE
            WITH bumped AS (
                UPDATE {s}.agent_sessions s
                   SET last_seq = s.last_seq + c.n, updated_at = v_now
                  FROM unnest(v_sessions, v_counts, v_owners) AS c(sid, n, owner)
                 WHERE s.tenant_id = p_tenant AND s.id = ANY (v_sessions) AND s.id = c.sid
                   AND c.sid <> ALL (v_bumped) AND (c.owner IS NULL OR s.user_id = c.owner)
                   AND s.id IN (SELECT l.id FROM {s}.agent_sessions l
                                 WHERE l.tenant_id = p_tenant AND l.id = ANY (v_sessions)
                                 ORDER BY l.id FOR UPDATE SKIP LOCKED)
                RETURNING s.id, s.last_seq - c.n AS base, s.user_id, s.forked
            )
            SELECT v_bumped || coalesce(array_agg(b.id), '{}'), v_bases || coalesce(array_agg(b.base), '{}'),
                   v_holders || coalesce(array_agg(b.user_id), '{}'), v_forked OR coalesce(bool_or(b.forked), false)
              INTO v_bumped, v_bases, v_holders, v_forked FROM bumped b;
        END IF;
        EXIT WHEN cardinality(v_bumped) = cardinality(v_sessions) OR v_round = 2;
        -- Create on first write what does not exist yet. A concurrent creator may win the
        -- race; when waiting, the second round then finds (and waits for) its row.
        WITH created AS (
            INSERT INTO {s}.agent_sessions AS s (tenant_id, id, user_id, agent_name, last_seq, created_at, updated_at)
            SELECT p_tenant, c.sid, c.owner, c.agent, c.n, v_now, v_now
              FROM unnest(v_sessions, v_counts, v_owners, v_agents) AS c(sid, n, owner, agent)
             WHERE c.agent IS NOT NULL AND c.owner IS NOT NULL AND c.sid <> ALL (v_bumped)
               AND c.sid <> ALL (ARRAY(SELECT x.id FROM {s}.agent_sessions x
                                        WHERE x.tenant_id = p_tenant AND x.id = ANY (v_sessions)))
             ORDER BY c.sid
            ON CONFLICT DO NOTHING
            RETURNING s.id, 0::bigint AS base, s.user_id
        )
        SELECT v_bumped || coalesce(array_agg(c.id), '{}'), v_bases || coalesce(array_agg(c.base), '{}'),
               v_holders || coalesce(array_agg(c.user_id), '{}')
          INTO v_bumped, v_bases, v_holders FROM created c;
        EXIT WHEN cardinality(v_bumped) = cardinality(v_sessions) OR NOT p_wait;
    END LOOP;
    IF cardinality(v_bumped) < cardinality(v_sessions) THEN
        -- Why the others cannot be written: no such session ('n'), another user's ('o'), or
        -- held by another transaction ('b').
        RETURN QUERY
        SELECT r.req, r.sid, NULL::text, NULL::bigint, NULL::timestamptz,
               CASE WHEN s.id IS NULL AND r.agent IS NULL THEN 'n'
                    WHEN s.id IS NULL OR (r.owner IS NOT NULL AND s.user_id <> r.owner) THEN 'o'
                    ELSE 'b' END
          FROM (SELECT DISTINCT n.req, n.sid, n.owner, n.agent
                  FROM unnest(p_reqs, p_sessions, p_owners, p_agents) AS n(req, sid, owner, agent)
                 WHERE n.req <> ALL (v_done) AND n.sid <> ALL (v_bumped)) r
          LEFT JOIN (SELECT x.id, x.user_id FROM {s}.agent_sessions x
                      WHERE x.tenant_id = p_tenant AND x.id = ANY (v_sessions)) s ON s.id = r.sid;
    END IF;
    IF cardinality(v_bumped) > 0 AND (v_forked OR 'main' <> ANY (p_branches)) THEN
        -- A branch written to must exist and not be deleted; the session rows are locked, so
        -- no fork or deletion of a branch can interleave. Refused: the whole call rolls back.
        SELECT n.sid, n.branch INTO v_sid, v_first
          FROM (SELECT DISTINCT n.sid, n.branch FROM unnest(p_reqs, p_sessions, p_branches) AS n(req, sid, branch)
                 WHERE n.req <> ALL (v_done) AND n.sid = ANY (v_bumped)) n
          LEFT JOIN {s}.conversation_branches b
                 ON b.tenant_id = p_tenant AND b.session_id = ANY (v_all) AND b.session_id = n.sid AND b.name = n.branch
         WHERE b.deleted_at IS NOT NULL OR (b.name IS NULL AND n.branch <> 'main')
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'no_data_found',
                MESSAGE = format('session %s has no branch %s', v_sid, v_first);
        END IF;
    END IF;
    IF cardinality(v_bumped) > 0 THEN
        RETURN QUERY
        INSERT INTO {s}.conversation_messages AS m
            (tenant_id, session_id, seq, id, user_id, role, content, tool_calls, tool_call_id, raw, created_at,
             key_id, sealed, branch, tokens, kind)
        SELECT p_tenant, b.sid, b.base + row_number() OVER (PARTITION BY b.sid ORDER BY n.ord), n.id, b.holder,
               n.role, n.content, n.tool_calls::jsonb, n.tool_call_id, n.raw::jsonb, v_now, n.key_id, n.sealed,
               n.branch, n.tokens, n.kind
          FROM unnest(p_reqs, p_sessions, p_ids, p_roles, p_contents, p_tool_calls, p_tool_call_ids, p_raws,
                      p_key_ids, p_sealed, p_branches, p_tokens, p_kinds)
               WITH ORDINALITY
               AS n(req, sid, id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, branch, tokens, kind,
                    ord)
          JOIN unnest(v_bumped, v_bases, v_holders) AS b(sid, base, holder) ON b.sid = n.sid
         WHERE n.req <> ALL (v_done)
        RETURNING NULL::int, m.session_id::text, m.id::text, m.seq, m.created_at, 'i'::text;
    END IF;
END
$fn$;
