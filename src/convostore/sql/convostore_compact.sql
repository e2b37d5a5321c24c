-- Compaction that keeps the record: summary rows (p_ids ...) replace, in the view of branch
-- p_branch, its rows from seq p_from on, which stay stored. One transaction under the session
-- row's lock: appends wait and land after the summary, never inside what it replaces.
--
-- p_expect: the seqs of the view from p_from on that the summary was made from; if the view
-- holds anything else now, nothing is written ('s'). NULL: replace the whole view as it is.
-- Each summary row records the range it stands for (covers_from, covers_to), widened to
-- hold the ranges of earlier summaries it replaces (a summary of nothing is one marker row,
-- of kind 'convostore.empty_summary'). With p_prune_to, the view's messages before the
-- replaced ones up to that seq are hidden too, by a marker (expired items an encrypted
-- session drops). Outcomes: 'i' rows inserted, 'r' a retry of a compaction already stored
-- (its rows), 'n' no such session, 'o' another user's, 's' the view changed, 'e' nothing to
-- replace. The branch's line and the view are worked out as in convostore_read.
CREATE OR REPLACE FUNCTION {s}.convostore_compact(
    p_tenant text, p_session text, p_user text, p_branch text, p_from bigint, p_expect bigint[],
    p_ids text[], p_roles text[], p_contents text[], p_tool_calls text[], p_tool_call_ids text[], p_raws text[],
    p_key_ids text[], p_sealed bytea[], p_tokens int[], p_kinds text[], p_prune_to bigint
) RETURNS TABLE (id text, seq bigint, created_at timestamptz, outcome text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_owner text;
    v_forked boolean;
    v_compacted boolean := true;
    p_raw boolean := false;
    v_last bigint;
    v_tail bigint[];
    v_inner bigint;
    v_pruned bigint;
    v_now timestamptz := now();
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
    SELECT s.user_id, s.forked, s.last_seq INTO v_owner, v_forked, v_last
      FROM {s}.agent_sessions s WHERE s.tenant_id = p_tenant AND s.id = p_session FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::timestamptz, 'n'::text;
        RETURN;
    END IF;
    IF p_user IS NOT NULL AND v_owner <> p_user THEN
        RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::timestamptz, 'o'::text;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM {s}.conversation_messages x
                WHERE x.session_id = p_session AND x.tenant_id = p_tenant AND x.id = p_ids[1]) THEN
        RETURN QUERY SELECT x.id::text, x.seq, x.created_at, 'r'::text FROM {s}.conversation_messages x
                      WHERE x.session_id = p_session AND x.tenant_id = p_tenant AND x.id = ANY (p_ids)
                      ORDER BY x.seq;
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

    SELECT array_agg(m.seq ORDER BY m.seq), min(m.covers_from) INTO v_tail, v_inner
      FROM {s}.conversation_messages m
     WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq >= coalesce(p_from, 0);
    IF p_expect IS NOT NULL AND v_tail IS DISTINCT FROM p_expect THEN
        RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::timestamptz, 's'::text;
        RETURN;
    END IF;
    IF v_tail IS NULL THEN
        RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::timestamptz, 'e'::text;
        RETURN;
    END IF;
    IF p_prune_to IS NOT NULL THEN
        SELECT min(m.seq) INTO v_pruned FROM {s}.conversation_messages m
         WHERE m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM 'convostore.empty_summary'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t)) AND m.seq <= p_prune_to AND m.seq < v_tail[1];
    END IF;
    UPDATE {s}.agent_sessions s
       SET last_seq = v_last + cardinality(p_ids) + (v_pruned IS NOT NULL)::int, updated_at = v_now, compacted = true
     WHERE s.tenant_id = p_tenant AND s.id = p_session;
    IF v_pruned IS NOT NULL THEN
        INSERT INTO {s}.conversation_messages AS m
            (tenant_id, session_id, seq, id, user_id, role, content, raw, created_at, branch, tokens, kind,
             covers_from, covers_to)
        VALUES (p_tenant, p_session, v_last + cardinality(p_ids) + 1, p_ids[1] || '.pruned', v_owner, 'item', '',
                jsonb_build_object('type', 'convostore.empty_summary'), v_now, p_branch, 0, 'convostore.empty_summary', v_pruned, least(p_prune_to, v_tail[1] - 1));
    END IF;
    RETURN QUERY
    INSERT INTO {s}.conversation_messages AS m
        (tenant_id, session_id, seq, id, user_id, role, content, tool_calls, tool_call_id, raw, created_at,
         key_id, sealed, branch, tokens, kind, covers_from, covers_to)
    SELECT p_tenant, p_session, v_last + n.ord, n.id, v_owner, n.role, n.content, n.tool_calls::jsonb,
           n.tool_call_id, n.raw::jsonb, v_now, n.key_id, n.sealed, p_branch, n.tokens, n.kind,
           least(v_tail[1], v_inner), v_tail[cardinality(v_tail)]
      FROM unnest(p_ids, p_roles, p_contents, p_tool_calls, p_tool_call_ids, p_raws, p_key_ids, p_sealed, p_tokens,
                  p_kinds)
           WITH ORDINALITY AS n(id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, tokens, kind, ord)
    RETURNING m.id::text, m.seq, m.created_at, 'i'::text;
END
$fn$;
