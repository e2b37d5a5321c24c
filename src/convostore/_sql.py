"""Every SQL statement convostore runs, as named constants.

Templates refer to tables as ``{s}.name``; :func:`render` substitutes the schema once, after
:func:`quote_ident` has validated and quoted it. Values always travel as ``$n`` parameters.

Every statement is scoped: ``$1`` is the tenant (``NULL`` only in an operator's statement
across tenants), and a user, where one is given, narrows it further. Rows carry their
tenant (and messages their owner), so no scope needs a join or a subquery.

Shapes are chosen so that the tables can be distributed by session id (Citus): every
message statement filters by ``session_id``, every key on messages includes it, ordering
uses a per-session counter kept on the session row (never a global sequence), and the two
hot paths are functions that a distributed database can route whole to the node holding
the session (``convostore_append``, ``convostore_read``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from .errors import ConfigurationError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def quote_ident(name: str) -> str:
    """Validate a schema name and return it double-quoted."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ConfigurationError(
            f"invalid schema name {name!r}: use 1-63 letters, digits or underscores, not starting with a digit"
        )
    return f'"{name}"'


_MESSAGE_COLUMNS = (
    "id, seq, role, content, tool_calls, tool_call_id, raw, created_at, key_id, sealed, branch, covers_from, covers_to"
)
# A session expires at expires_at (a fixed expiry) or, with a ttl (a sliding one), ttl after
# its last activity: derived when read (convostore._rows), so that appends never write it.
_SESSION_COLUMNS = "id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl"

# -- the functions (created by migrations) -----------------------------------------------------

# Every append is one call of this function: one round trip, one commit, whether it carries
# one caller's batch or many callers' batches for many sessions (coalesced).
#
# * Order: each session's row is updated to allocate the batch's seq range (last_seq) and
#   stays locked until commit, so seq is gap-free and in commit order per session.
# * Exactly once: ids come from the client. With p_probe (a retry, or ids the caller chose),
#   a request with a stored id is a replay: its stored rows are returned ('r', or 'c' where
#   the id holds another message) and nothing is written. Without p_probe a reused id fails
#   the unique index, which rolls the whole call back.
# * Ownership in the same call: a request's owner (if given) must own the session; with an
#   agent, an absent session is created on first write.
# * With p_wait false (a coalesced batch), rows other transactions hold are skipped and their
#   requests reported busy ('b') instead of stalling the whole batch; 'n' is no such session,
#   'o' another user's.
# * p_route is a session of the batch: a sharded database routes the call by it, and the
#   batch only holds sessions of that session's shard.
# * Branches: each request writes one branch of its session (p_branches, per row). In a
#   session that was ever forked, or for a branch other than 'main', the branch must exist
#   and not be deleted, checked under the session rows' locks; otherwise the whole call
#   fails (no_data_found), and a coalesced batch is sent again request by request.
# The append functions' arguments and results (convostore_append_sharded's are the same).
_APPEND_SIGNATURE = """
    p_tenant text, p_route text, p_scope_user text, p_probe boolean, p_wait boolean,
    p_reqs int[], p_sessions text[], p_owners text[], p_agents text[], p_branches text[],
    p_ids text[], p_roles text[], p_contents text[], p_tool_calls text[], p_tool_call_ids text[], p_raws text[],
    p_key_ids text[], p_sealed bytea[], p_tokens int[], p_kinds text[]
) RETURNS TABLE (req int, session_id text, id text, seq bigint, created_at timestamptz, outcome text)
"""
APPEND_FUNCTION = (
    """
CREATE OR REPLACE FUNCTION {s}.convostore_append("""
    + _APPEND_SIGNATURE
    + """LANGUAGE plpgsql AS $fn$
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
"""
)

# A lone append to 'main' of a session that exists, was never forked and is owned as asked
# ($3; NULL: by any user of the tenant), on tables that are not distributed and by a role not
# under row-level security: one statement in the integrity floor's shape (bump the session's
# counter under its row lock, insert with the seq it returns). No row returned: the session is
# absent, another user's or forked, and nothing was written; the caller then calls
# convostore_append, which creates on first write, checks branches and says why. A stored id
# fails the unique index (nothing written) and the caller probes with convostore_append too.
APPEND_ONE = """
WITH b AS (
    UPDATE {s}.agent_sessions s SET last_seq = s.last_seq + 1, updated_at = now()
     WHERE s.tenant_id = $1 AND s.id = $2 AND ($3::text IS NULL OR s.user_id = $3) AND NOT s.forked
    RETURNING s.last_seq, s.user_id
)
INSERT INTO {s}.conversation_messages AS m
    (tenant_id, session_id, seq, user_id, created_at, id, role, content, tool_calls, tool_call_id, raw,
     key_id, sealed, tokens, kind, branch)
SELECT $1, $2, b.last_seq, b.user_id, now(), $4, $5, $6, $7::jsonb, $8, $9::jsonb, $10, $11, $12, $13, 'main'
  FROM b
RETURNING m.id::text, m.seq, m.created_at, 'i'::text AS outcome
"""
# The same for a batch of one session: its rows as arrays, numbered from the bumped counter.
APPEND_ROWS = """
WITH b AS (
    UPDATE {s}.agent_sessions s SET last_seq = s.last_seq + cardinality($4::text[]), updated_at = now()
     WHERE s.tenant_id = $1 AND s.id = $2 AND ($3::text IS NULL OR s.user_id = $3) AND NOT s.forked
    RETURNING s.last_seq - cardinality($4::text[]) AS base, s.user_id
)
INSERT INTO {s}.conversation_messages AS m
    (tenant_id, session_id, seq, user_id, created_at, id, role, content, tool_calls, tool_call_id, raw,
     key_id, sealed, tokens, kind, branch)
SELECT $1, $2, b.base + n.ord, b.user_id, now(), n.id, n.role, n.content, n.tool_calls::jsonb, n.tool_call_id,
       n.raw::jsonb, n.key_id, n.sealed, n.tokens, n.kind, 'main'
  FROM b, unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[],
                 $12::int[], $13::text[]) WITH ORDINALITY
          AS n(id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, tokens, kind, ord)
RETURNING m.id::text, m.seq, m.created_at, 'i'::text AS outcome
"""

# On distributed tables (Citus), appends call this function instead of convostore_append,
# with the same arguments and results. Where the node it runs on holds the shards of every
# session of the call (checked after taking the lock Citus's executor takes before writing
# a shard, which keeps writes out while the shard moves or splits), it writes the shards'
# own tables: the same steps as convostore_append's batch path, one shard at a time:
# allocate each session's seq range (waiting for its row, or skipping rows other
# transactions hold when p_wait is false), create on first write, check 'main' in a session
# that was forked, insert the messages, and report the sessions not written ('n', 'o' or
# 'b'), after returning the stored rows of requests already stored (p_probe). Otherwise (a
# shard elsewhere, a branch other than 'main') it calls convostore_append, whose statements
# Citus routes to the shards; for a call of several sessions, which that cannot run on
# distributed tables, it reports every request busy instead, and the caller sends them
# again session by session.
#
# The statements name the shard's tables ({sessions}, {messages}), so they cannot be written
# in the function itself: each is prepared once per connection and shard (PREPARE, named
# after the shard and this version of the statements, kept by the connection) and run with
# the call's values (EXECUTE), on one plan kept per statement. None goes through Citus's
# planner.
_WRITE1 = """WITH b AS (
    UPDATE {sessions} s SET last_seq = s.last_seq + 1, updated_at = $4
     WHERE s.tenant_id = $1 AND s.id = $2 AND ($3 IS NULL OR s.user_id = $3){skip}
    RETURNING s.last_seq, s.user_id, s.forked)
INSERT INTO {messages} AS m
    (tenant_id, session_id, seq, user_id, created_at, id, role, content, tool_calls, tool_call_id, raw,
     key_id, sealed, tokens, kind, branch)
SELECT $1, $2, b.last_seq, b.user_id, $4, $5, $6, $7, $8::jsonb, $9, $10::jsonb, $11, $12, $13, $14, 'main' FROM b
RETURNING m.seq, m.created_at, (SELECT b.forked FROM b)"""
_BUMP1 = """UPDATE {sessions} s SET last_seq = s.last_seq + $3, updated_at = $5
 WHERE s.tenant_id = $1 AND s.id = $2 AND ($4 IS NULL OR s.user_id = $4){skip}
RETURNING s.last_seq - $3, s.user_id, s.forked"""
_BUMP = """WITH b AS (
    UPDATE {sessions} s SET last_seq = s.last_seq + c.n, updated_at = $5
      FROM unnest($2, $3, $4) AS c(sid, n, owner)
     WHERE s.tenant_id = $1 AND s.id = ANY ($2) AND s.id = c.sid AND (c.owner IS NULL OR s.user_id = c.owner){skip}
    RETURNING s.id, s.last_seq - c.n AS base, s.user_id, s.forked)
SELECT coalesce(array_agg(b.id), '{}'), coalesce(array_agg(b.base), '{}'), coalesce(array_agg(b.user_id), '{}'),
       coalesce(array_agg(b.id) FILTER (WHERE b.forked), '{}')
  FROM b"""
# Skipping the session rows another transaction holds (a coalesced batch), for the shapes above.
_SKIP1 = """
   AND s.id IN (SELECT l.id FROM {sessions} l WHERE l.tenant_id = $1 AND l.id = $2 FOR UPDATE SKIP LOCKED)"""
_SKIP = """
       AND s.id IN (SELECT l.id FROM {sessions} l WHERE l.tenant_id = $1 AND l.id = ANY ($2)
                     ORDER BY l.id FOR UPDATE SKIP LOCKED)"""
_HERE_STATEMENTS = {
    # One message for one session ($2, owned by $3 if not null): allocate its seq and insert
    # it, waiting for the session's row, or skipping it if another transaction holds it
    # (then nothing is returned); $1 tenant, $4 now, $5-$14 its columns.
    "write1_w": (
        "text, text, text, timestamptz, text, text, text, text, text, text, text, bytea, int, text",
        _WRITE1.replace("{skip}", ""),
    ),
    "write1_s": (
        "text, text, text, timestamptz, text, text, text, text, text, text, text, bytea, int, text",
        _WRITE1.replace("{skip}", _SKIP1),
    ),
    # One session ($2) with its row count ($3) and owner ($4); $1 tenant, $5 now. Waiting for
    # its row, or skipping it if another transaction holds it.
    "bump1_w": ("text, text, bigint, text, timestamptz", _BUMP1.replace("{skip}", "")),
    "bump1_s": ("text, text, bigint, text, timestamptz", _BUMP1.replace("{skip}", _SKIP1)),
    # Sessions ($2) with their row counts ($3) and owners ($4); $1 tenant, $5 now.
    "bump_w": ("text, text[], bigint[], text[], timestamptz", _BUMP.replace("{skip}", "")),
    "bump_s": ("text, text[], bigint[], text[], timestamptz", _BUMP.replace("{skip}", _SKIP)),
    # Create on first write: sessions ($2) with their row counts ($3), owners ($4) and agents
    # ($5); $1 tenant, $6 now.
    "create": (
        "text, text[], bigint[], text[], text[], timestamptz",
        """WITH c AS (
    INSERT INTO {sessions} AS s (tenant_id, id, user_id, agent_name, last_seq, created_at, updated_at)
    SELECT $1, c.sid, c.owner, c.agent, c.n, $6, $6 FROM unnest($2, $3, $4, $5) AS c(sid, n, owner, agent)
     WHERE c.agent IS NOT NULL AND c.owner IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM {sessions} x WHERE x.tenant_id = $1 AND x.id = c.sid)
     ORDER BY c.sid
    ON CONFLICT DO NOTHING
    RETURNING s.id, s.user_id)
SELECT coalesce(array_agg(c.id), '{}'), coalesce(array_agg(c.user_id), '{}') FROM c""",
    ),
    # Why sessions ($6) were not written; $1 tenant, $2-$5 each message's request, session,
    # owner and agent.
    "refuse": (
        "text, int[], text[], text[], text[], text[], int[]",
        """SELECT r.req, r.sid, NULL::text, NULL::bigint, NULL::timestamptz,
       CASE WHEN s.id IS NULL AND r.agent IS NULL THEN 'n'
            WHEN s.id IS NULL OR (r.owner IS NOT NULL AND s.user_id <> r.owner) THEN 'o'
            ELSE 'b' END
  FROM (SELECT DISTINCT n.req, n.sid, n.owner, n.agent
          FROM unnest($2, $3, $4, $5) AS n(req, sid, owner, agent) WHERE n.sid = ANY ($6) AND n.req <> ALL ($7)) r
  LEFT JOIN {sessions} s ON s.tenant_id = $1 AND s.id = ANY ($6) AND s.id = r.sid""",
    ),
    # Requests already stored (a retry, or ids the caller chose): those whose first id is
    # stored (a request is stored whole or not at all), with their stored rows, 'r' where
    # identical, 'c' where the id holds another message. $1 tenant; $2-$9 the messages'
    # requests, sessions, ids and columns.
    "probe": (
        "text, int[], text[], text[], text[], text[], text[], text[], text[]",
        """WITH n AS (
    SELECT * FROM unnest($2, $3, $4, $5, $6, $7, $8, $9) WITH ORDINALITY
                  AS n(req, sid, id, role, content, tool_calls, tool_call_id, raw, ord)),
done AS (
    SELECT f.req FROM (SELECT DISTINCT ON (n.req) n.req, n.sid, n.id FROM n ORDER BY n.req, n.ord) f
     WHERE EXISTS (SELECT 1 FROM {messages} x WHERE x.session_id = f.sid AND x.tenant_id = $1 AND x.id = f.id))
SELECT n.req, m.session_id::text, m.id::text, m.seq, m.created_at,
       CASE WHEN (m.role, m.content, m.tool_calls, m.tool_call_id, m.raw)
                 IS NOT DISTINCT FROM (n.role, n.content, n.tool_calls::jsonb, n.tool_call_id, n.raw::jsonb)
            THEN 'r' ELSE 'c' END AS outcome
  FROM n JOIN done d ON d.req = n.req
  JOIN {messages} m ON m.session_id = n.sid AND m.tenant_id = $1 AND m.id = n.id""",
    ),
    # One message: $1 tenant, $2 session, $3 its seq, $4 owner, $5 now, $6-$15 its columns.
    "insert1": (
        "text, text, bigint, text, timestamptz, text, text, text, text, text, text, text, bytea, int, text",
        """INSERT INTO {messages} AS m
    (tenant_id, session_id, seq, user_id, created_at, id, role, content, tool_calls, tool_call_id, raw,
     key_id, sealed, tokens, kind, branch)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11::jsonb, $12, $13, $14, $15, 'main')
RETURNING NULL::int, m.session_id::text, m.id::text, m.seq, m.created_at, 'i'::text""",
    ),
    # Messages: $1 tenant, $2 now, $3-$13 their columns; $14-$16 the sessions written, each
    # with its first seq less one and its owner.
    "insert": (
        "text, timestamptz, text[], text[], text[], text[], text[], text[], text[], text[], bytea[], int[], text[], "
        "text[], bigint[], text[]",
        """INSERT INTO {messages} AS m
    (tenant_id, session_id, seq, id, user_id, role, content, tool_calls, tool_call_id, raw, created_at,
     key_id, sealed, branch, tokens, kind)
SELECT $1, b.sid, b.base + row_number() OVER (PARTITION BY b.sid ORDER BY n.ord), n.id, b.holder,
       n.role, n.content, n.tool_calls::jsonb, n.tool_call_id, n.raw::jsonb, $2, n.key_id, n.sealed,
       'main', n.tokens, n.kind
  FROM unnest($3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) WITH ORDINALITY
       AS n(sid, id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, tokens, kind, ord)
  JOIN unnest($14, $15, $16) AS b(sid, base, holder) ON b.sid = n.sid
RETURNING NULL::int, m.session_id::text, m.id::text, m.seq, m.created_at, 'i'::text""",
    ),
}
_HERE_VERSION = "cs12"  # names the statements: a connection may outlive a version of them


def _prepared(name: str) -> str:
    """PL/pgSQL that prepares statement *name* of those above for shard ``v_shard`` on this
    connection, unless it is (marked by a setting of the connection; a rolled-back call leaves
    the statement prepared but not the mark, so it is looked up before it is prepared again)."""
    types, body = _HERE_STATEMENTS[name]
    text = body.replace("{sessions}", "%2$s").replace("{messages}", "%3$s").replace("'", "''")
    return f"""IF current_setting('convostore.{{v}}_{name}_' || v_shard, true) IS DISTINCT FROM 'y' THEN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements p WHERE p.name = '{{v}}_{name}_' || v_shard) THEN
        EXECUTE format('PREPARE %1$I ({types}) AS
{text}', '{{v}}_{name}_' || v_shard, pg_catalog.shard_name('{{s}}.agent_sessions', v_shard),
            pg_catalog.shard_name('{{s}}.conversation_messages',
                pg_catalog.get_shard_id_for_distribution_column('{{s}}.conversation_messages', v_sids[1])));
    END IF;
    PERFORM set_config('convostore.{{v}}_{name}_' || v_shard, 'y', false);
END IF;"""


def _with_statements(function: str) -> str:
    """*function* with each ``{prepare:name}`` line replaced by the PL/pgSQL preparing that
    statement (both ``name_w`` and ``name_s`` for a name without an entry of its own: a lone
    append then readies a connection for batches too)."""

    def block(match: re.Match[str]) -> str:
        indent, name = match.group(1), match.group(2)
        names = [name] if name in _HERE_STATEMENTS else [f"{name}_w", f"{name}_s"]
        return "\n".join(indent + line for n in names for line in _prepared(n).split("\n"))

    return re.sub(r"^( *)\{prepare:(\w+)\}$", block, function, flags=re.MULTILINE)


APPEND_SHARDED_FUNCTION = (
    """
CREATE OR REPLACE FUNCTION {s}.convostore_append_sharded("""
    + _APPEND_SIGNATURE
    + """LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
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
          FROM (SELECT pg_catalog.get_shard_id_for_distribution_column('{s}.agent_sessions', n.sid) AS shard,
                       n.sid, count(*) AS n, min(n.owner) AS owner, min(n.agent) AS agent
                  FROM unnest(p_sessions, p_owners, p_agents) AS n(sid, owner, agent) GROUP BY n.sid) c;
    ELSE
        a_shards := ARRAY[pg_catalog.get_shard_id_for_distribution_column('{s}.agent_sessions', p_sessions[1])];
        a_sids := ARRAY[p_sessions[1]];
        a_counts := ARRAY[cardinality(p_ids)::bigint];
        a_owners := ARRAY[p_owners[1]];
        a_agents := ARRAY[p_agents[1]];
    END IF;
    IF NOT ('main' = ALL (p_branches)) OR NOT {s}.convostore_hold_shards(a_shards) THEN
        IF v_many THEN
            RETURN QUERY SELECT DISTINCT n.req, n.sid, NULL::text, NULL::bigint, NULL::timestamptz, 'b'::text
                           FROM unnest(p_reqs, p_sessions) AS n(req, sid);
        ELSE
            RETURN QUERY SELECT * FROM {s}.convostore_append(
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
            {prepare:probe}
            FOR v_row IN EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L, %L, %L)', '{v}_probe_' || v_shard,
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
            {prepare:write1}
            EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L)',
                           '{v}_write1_' || CASE WHEN p_wait THEN 'w_' ELSE 's_' END || v_shard,
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
            {prepare:bump1}
            EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L)',
                           '{v}_bump1_' || CASE WHEN p_wait THEN 'w_' ELSE 's_' END || v_shard,
                           p_tenant, v_sids[1], v_counts[1], v_owners[1], v_now)
               INTO v_base, v_holder, v_isforked;
            v_bumped := CASE WHEN v_base IS NULL THEN '{}' ELSE v_sids END;
            v_bases := CASE WHEN v_base IS NULL THEN '{}' ELSE ARRAY[v_base] END;
            v_holders := CASE WHEN v_base IS NULL THEN '{}' ELSE ARRAY[v_holder] END;
        ELSE
            {prepare:bump}
            EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L)',
                           '{v}_bump_' || CASE WHEN p_wait THEN 'w_' ELSE 's_' END || v_shard,
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
                {prepare:create}
                EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L)', '{v}_create_' || v_shard,
                               p_tenant, v_left, v_lcounts, v_lowners, v_lagents, v_now)
                   INTO r_ids, r_holders;
                r_bases := array_fill(0::bigint, ARRAY[cardinality(r_ids)]);
                r_forked := '{}';
            ELSE
                {prepare:bump_w}
                EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L)', '{v}_bump_w_' || v_shard,
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
                           pg_catalog.shard_name('{s}.conversation_branches',
                               pg_catalog.get_shard_id_for_distribution_column('{s}.conversation_branches', v_sids[1])))
               INTO v_sid USING p_tenant, v_forked;
            IF v_sid IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'no_data_found',
                    MESSAGE = format('session %s has no branch main', v_sid);
            END IF;
        END IF;
        IF cardinality(v_bumped) < cardinality(v_sids) THEN
            {prepare:refuse}
            RETURN QUERY EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L)', '{v}_refuse_' || v_shard,
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
            {prepare:insert1}
            RETURN QUERY EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L)',
                                        '{v}_insert1_' || v_shard, p_tenant, v_bumped[1], v_bases[1] + 1,
                                        v_holders[1], v_now, m_ids[1], m_roles[1], m_contents[1], m_tool_calls[1],
                                        m_tool_call_ids[1], m_raws[1], m_key_ids[1], m_sealed[1], m_tokens[1],
                                        m_kinds[1]);
        ELSE
            {prepare:insert}
            RETURN QUERY EXECUTE format('EXECUTE %I(%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L)',
                                        '{v}_insert_' || v_shard, p_tenant, v_now, m_sessions, m_ids, m_roles,
                                        m_contents, m_tool_calls, m_tool_call_ids, m_raws, m_key_ids, m_sealed,
                                        m_tokens, m_kinds, v_bumped, v_bases, v_holders);
        END IF;
    END LOOP;
END
$fn$;

-- Takes the lock Citus's executor takes on a shard's metadata before writing the shard
-- (share: writers do not block each other; a shard move or split takes it exclusively) on
-- each of the shards, and tells whether this node holds them all, for
-- convostore_append_sharded's writes to the shards' own tables. Citus lets only the
-- tables' owner take that lock, so the function runs as its owner; the ids are sorted, as
-- Citus requires.
CREATE OR REPLACE FUNCTION {s}.convostore_hold_shards(p_shards bigint[]) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_shards bigint[] := ARRAY(SELECT DISTINCT x FROM unnest(p_shards) AS x WHERE x IS NOT NULL ORDER BY 1);
BEGIN
    IF cardinality(v_shards) = 0 THEN
        RETURN false;
    END IF;
    PERFORM pg_catalog.lock_shard_metadata(5, v_shards);
    RETURN (SELECT count(*) FROM pg_catalog.pg_dist_placement p
             WHERE p.shardid = ANY (v_shards)
               AND p.groupid = (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g)) = cardinality(v_shards);
END
$fn$;
"""
)
APPEND_SHARDED_FUNCTION = _with_statements(APPEND_SHARDED_FUNCTION).replace("{v}", _HERE_VERSION)

# A branch's line of rows (PL/pgSQL, shared by the functions below): its own rows, then its
# parent's up to the fork, and so on to 'main'. Sets v_names (the branches) and v_limits (the
# last seq each contributes) and v_floor (rows at or below it were cleared from the branch's
# view); a branch that does not exist or was deleted raises no_data_found (P0002). A session never forked
# has one line, 'main', without a lookup.
_LINEAGE = """
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
"""

_LINEAGE_VARS = """
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
"""

# What a compaction that replaced messages with nothing leaves: a marker of the range, itself
# never in the view.
MARKER_KIND = "convostore.empty_summary"

# Whether row m is in the view (the line, above the floor, not hidden by a summary, no marker).
_VISIBLE = f"""m.session_id = p_session AND m.tenant_id = p_tenant AND m.seq > v_floor
           AND m.seq <= v_limits[array_position(v_names, m.branch::text)]
           AND m.kind IS DISTINCT FROM '{MARKER_KIND}'
           AND (v_from IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(v_from, v_to) AS r(f, t)
                                                WHERE m.seq BETWEEN r.f AND r.t))"""

# (A sealed row's content column holds a digest the reader has no use for: it is not sent.)
_READ_COLUMNS = """m.id::text, m.seq, m.role::text, CASE WHEN m.sealed IS NULL THEN m.content END, m.tool_calls,
                   m.tool_call_id::text, m.raw,
                   m.created_at, m.key_id::text, m.sealed, m.branch::text, m.covers_from, m.covers_to"""

# A token count for rows written without one (before counts were kept).
_TOKENS = "coalesce(m.tokens, octet_length(coalesce(m.raw::text, m.content)) / 4 + 1)"

# The rows of a session that never forked nor compacted: all of them.
_WHOLE = "m.session_id = p_session AND m.tenant_id = p_tenant"


def _windowed(visible: str) -> str:
    """The PL/pgSQL that returns the window of the rows matching *visible* (see READ_FUNCTION)."""
    pinned = "m.role IN ('system', 'developer')"

    def rows(first: str, pins: bool) -> str:
        pinned_rows = f"""
                UNION ALL
                (SELECT {_READ_COLUMNS}
                   FROM {{s}}.conversation_messages m
                  WHERE v_pinned AND {first} > 0 AND {visible} AND m.seq < least({first}, v_below) AND {pinned})"""
        return f"""
            SELECT v_owner, x.* FROM (
                (SELECT {_READ_COLUMNS}
                   FROM {{s}}.conversation_messages m
                  WHERE {visible} AND m.seq < v_below AND m.seq >= {first}
                  ORDER BY m.seq DESC
                  LIMIT p_limit){pinned_rows if pins else ""}
            ) x ORDER BY x.seq;"""

    def turns(pins: bool) -> str:
        # The window starts at the p_turns-th newest user message (at the oldest row if there
        # are fewer), found by reading back just that far; if the row before it is a
        # reasoning item, or the window is empty, the start is worked out below instead.
        return f"""
            RETURN QUERY
            WITH u AS (SELECT m.seq FROM {{s}}.conversation_messages m
                        WHERE {visible} AND m.seq < v_below AND m.role = 'user'
                        ORDER BY m.seq DESC OFFSET greatest(p_turns - 1, 0) LIMIT 1),
                 cut AS (SELECT CASE WHEN p_turns = 0 THEN v_below
                                     WHEN (SELECT p.kind FROM {{s}}.conversation_messages p
                                            WHERE {visible.replace("m.", "p.")} AND p.seq < (SELECT seq FROM u)
                                            ORDER BY p.seq DESC LIMIT 1) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM u), 0) END AS seq)
            {rows("(SELECT seq FROM cut)", pins)}"""

    def budget(pins: bool) -> str:
        counted = f"CASE WHEN {pinned} THEN 0 ELSE {_TOKENS} END" if pins else _TOKENS
        pin = f"""pin AS (
                    SELECT coalesce(sum({_TOKENS}), 0) AS tokens FROM {{s}}.conversation_messages m
                     WHERE {visible} AND m.seq < v_below AND {pinned}
                 ),"""
        # The rows read newest first, with the tokens (after the pinned messages') and user
        # messages newer than each, up to the first row the window cannot take; the window
        # starts right after it, unless that row is a reasoning item (then worked out below).
        return f"""
            RETURN QUERY
            WITH {pin if pins else ""}
                 stop AS (
                    SELECT x.seq, x.kind FROM (
                        SELECT m.seq, m.kind,
                               sum({counted}) OVER w AS used,
                               count(*) FILTER (WHERE m.role = 'user') OVER w - (m.role = 'user')::int AS newer_users
                          FROM {{s}}.conversation_messages m
                         WHERE {visible} AND m.seq < v_below
                        WINDOW w AS (ORDER BY m.seq DESC ROWS UNBOUNDED PRECEDING)
                         ORDER BY m.seq DESC LIMIT v_below) x
                     WHERE x.used > p_budget{" - (SELECT tokens FROM pin)" if pins else ""} OR x.newer_users >= p_turns
                     LIMIT 1
                 ),
                 cut AS (SELECT CASE WHEN (SELECT kind FROM stop) = 'reasoning' THEN NULL
                                     ELSE coalesce((SELECT seq FROM stop) + 1, 0) END AS seq)
            {rows("(SELECT seq FROM cut)", pins)}"""

    return f"""
        IF p_above IS NOT NULL THEN  -- paging forwards: the first p_limit after seq p_above
            RETURN QUERY
            SELECT v_owner, {_READ_COLUMNS}
              FROM {{s}}.conversation_messages m
             WHERE {visible} AND m.seq > p_above AND m.seq < v_below
             ORDER BY m.seq
             LIMIT p_limit;
            RETURN;
        END IF;
        IF p_turns IS NULL AND p_budget IS NULL THEN
            RETURN QUERY
            SELECT v_owner, x.* FROM (
                SELECT {_READ_COLUMNS}
                  FROM {{s}}.conversation_messages m
                 WHERE {visible} AND m.seq < v_below
                 ORDER BY m.seq DESC
                 LIMIT p_limit
            ) x ORDER BY x.seq;
            RETURN;
        END IF;
        -- One statement for the window, in one of two shapes: with the pinned messages (their
        -- tokens and those before the window), or, when the session holds none (one probe of
        -- their index), without, which spares the reads and the plan nodes they cost.
        v_pinned := p_pinned AND EXISTS (SELECT 1 FROM {{s}}.conversation_messages m WHERE {_WHOLE} AND {pinned});
        IF p_budget IS NULL THEN
            IF v_pinned THEN{turns(True)}
            ELSE{turns(False)}
            END IF;
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
        IF v_pinned THEN{budget(True)}
        ELSE{budget(False)}
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
            SELECT coalesce(sum({_TOKENS}), 0) INTO v_pin FROM {{s}}.conversation_messages m
             WHERE {visible} AND m.seq < v_below AND {pinned};
        END IF;
        v_used := 0;
        v_users := 0;
        v_fit := coalesce(p_budget - v_pin, 9223372036854775807);
        v_turns := coalesce(p_turns, 9223372036854775807);
        FOR v_row IN
            SELECT m.seq, CASE WHEN v_pinned AND {pinned} THEN 0 ELSE {_TOKENS} END AS tokens,
                   (m.role = 'user')::int AS user_message, coalesce(m.kind = 'reasoning', false) AS reasoning
              FROM {{s}}.conversation_messages m
             WHERE {visible} AND m.seq < v_below ORDER BY m.seq DESC LIMIT v_below
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
        {rows("(SELECT seq FROM cut)", True)}
"""


# A session's messages, oldest first, each with the session's owner. No row: no such session.
# With p_user, a session of another user yields one row holding its owner and no message.
#
# The view is a branch's (p_branch; 'main' unless forked) with what compaction replaced
# hidden (unless p_raw). Below seq p_below, the window is the latest p_turns turns (a turn
# starts at a user message), cut further to the latest messages within p_budget tokens, and
# to the latest p_limit messages (or, paging forwards, the first p_limit after seq p_above);
# with p_pinned, the view's system and developer messages before the window come too (their
# tokens counted first). A session never forked nor compacted (or read raw) is read without
# working out a line: its rows are all its view.
#
# Its statements are planned once per connection (generic plans): every one of them reads
# one session's rows through an index, whatever the parameters, and planning them on every
# call (which PostgreSQL may keep doing when a custom plan looks cheaper) cost more than the
# reads of a last-20 or a window. (Not on distributed tables, where Citus plans each
# statement from its values: see FIT_TO_CITUS.)
# Every read in it is the session's key read backwards, newest first, as far as it needs,
# but for the pinned messages, read through their own partial index.
# Bitmap scans are off in it: under row-level security the policy's conditions made a
# reused plan estimate one row per session and read a whole long session through a bitmap
# and a sort to return its last 20. The reads of a window's start, which go as far as the
# window reaches, say LIMIT v_below (true: no more rows lie below it): a query without a
# LIMIT is planned to be read to its end, which a sort of the whole session can win.
READ_FUNCTION = (
    """
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
    v_row record;"""
    + _LINEAGE_VARS
    + """BEGIN
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
            SELECT v_owner, """
    + _READ_COLUMNS
    + """
              FROM {s}.conversation_messages m
             WHERE m.tenant_id = p_tenant AND m.session_id = p_session AND m.seq < v_below
               AND m.seq > coalesce(p_above, 0)
             ORDER BY m.seq;
            RETURN;
        END IF;"""
    + _windowed(_WHOLE)
    + """
        RETURN;
    END IF;"""
    + _LINEAGE
    + _windowed(_VISIBLE)
    + """
END
$fn$;
"""
)

# Compaction that keeps the record: summary rows (p_ids ...) replace, in the view of branch
# p_branch, its rows from seq p_from on, which stay stored. One transaction under the session
# row's lock: appends wait and land after the summary, never inside what it replaces.
#
# p_expect: the seqs of the view from p_from on that the summary was made from; if the view
# holds anything else now, nothing is written ('s'). NULL: replace the whole view as it is.
# Each summary row records the range it stands for (covers_from, covers_to), widened to
# hold the ranges of earlier summaries it replaces (a summary of nothing is one marker row,
# of kind MARKER_KIND). With p_prune_to, the view's messages before the replaced ones up to
# that seq are hidden too, by a marker (expired items an encrypted session drops).
# Outcomes: 'i' rows inserted, 'r' a retry of a compaction already stored (its rows), 'n' no
# such session, 'o' another user's, 's' the view changed, 'e' nothing to replace.
COMPACT_FUNCTION = (
    """
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
    v_now timestamptz := now();"""
    + _LINEAGE_VARS
    + """BEGIN
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
    END IF;"""
    + _LINEAGE
    + """
    SELECT array_agg(m.seq ORDER BY m.seq), min(m.covers_from) INTO v_tail, v_inner
      FROM {s}.conversation_messages m
     WHERE """
    + _VISIBLE
    + """ AND m.seq >= coalesce(p_from, 0);
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
         WHERE """
    + _VISIBLE
    + """ AND m.seq <= p_prune_to AND m.seq < v_tail[1];
    END IF;
    UPDATE {s}.agent_sessions s
       SET last_seq = v_last + cardinality(p_ids) + (v_pruned IS NOT NULL)::int, updated_at = v_now, compacted = true
     WHERE s.tenant_id = p_tenant AND s.id = p_session;
    IF v_pruned IS NOT NULL THEN
        INSERT INTO {s}.conversation_messages AS m
            (tenant_id, session_id, seq, id, user_id, role, content, raw, created_at, branch, tokens, kind,
             covers_from, covers_to)
        VALUES (p_tenant, p_session, v_last + cardinality(p_ids) + 1, p_ids[1] || '.pruned', v_owner, 'item', '',
                jsonb_build_object('type', '"""
    + MARKER_KIND
    + """'), v_now, p_branch, 0, '"""
    + MARKER_KIND
    + """', v_pruned, least(p_prune_to, v_tail[1] - 1));
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
"""
)

APPEND = "SELECT * FROM {s}.convostore_append(" + ", ".join(f"${n}" for n in range(1, 21)) + ")"
APPEND_SHARDED = "SELECT * FROM {s}.convostore_append_sharded(" + ", ".join(f"${n}" for n in range(1, 21)) + ")"
COMPACT = "SELECT * FROM {s}.convostore_compact(" + ", ".join(f"${n}" for n in range(1, 18)) + ")"
READ = "SELECT * FROM {s}.convostore_read($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"

# -- sessions ---------------------------------------------------------------------------------

SESSION_OWNER = "SELECT user_id FROM {s}.agent_sessions WHERE tenant_id = $1 AND id = $2"

CREATE_SESSION = f"""
INSERT INTO {{s}}.agent_sessions (tenant_id, id, user_id, agent_name, metadata, ttl, expires_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::interval, now() + $7::interval)
RETURNING {_SESSION_COLUMNS}
"""

# One round trip: the session row joined to the rows of its main branch (NULLs when it has none).
GET_SESSION = """
SELECT s.id, s.user_id, s.agent_name, s.metadata, s.created_at, s.updated_at, s.expires_at, s.ttl,
       m.id AS m_id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw,
       m.created_at AS m_created_at, m.key_id, m.sealed, m.branch, m.covers_from, m.covers_to
FROM {s}.agent_sessions s
LEFT JOIN {s}.conversation_messages m
       ON m.tenant_id = s.tenant_id AND m.session_id = s.id AND m.session_id = $2 AND m.branch = 'main'
WHERE s.tenant_id = $1 AND s.id = $2
ORDER BY m.seq
"""

# Locking the newest row with LIMIT 1 FOR UPDATE: a pop that loses the race for it skips
# the row its rival deleted and takes the next one, so each message is popped once. With
# $3, only a message of that owner (messages carry their session's owner). A forked or
# compacted session pops nothing here: its branches share rows, and its newest row may be
# hidden by a summary (see convostore._branches).
# The session row is locked first, as appends and the forked path (_branches.pop) lock it, so
# that no other pop deletes the message between its choice and its deletion.
POP_MESSAGE = """
WITH held AS (
    SELECT s.id FROM {s}.agent_sessions s
     WHERE s.tenant_id = $1 AND s.id = $2 AND NOT (s.forked OR s.compacted)
       FOR UPDATE
), victim AS (
    SELECT m.seq FROM {s}.conversation_messages m
    WHERE m.tenant_id = $1 AND m.session_id = $2 AND ($3::text IS NULL OR m.user_id = $3)
      AND EXISTS (SELECT 1 FROM held)
    ORDER BY m.seq DESC LIMIT 1 FOR UPDATE
)
DELETE FROM {s}.conversation_messages m USING victim
WHERE m.tenant_id = $1 AND m.session_id = $2 AND m.seq = victim.seq
RETURNING m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.key_id, m.sealed,
          m.branch, m.covers_from, m.covers_to
"""

# Deletions record themselves in the audit trail in the same statement ($4: the actor). A
# whole session's messages go with its branches.
CLEAR_SESSION = """
WITH gone AS (
    DELETE FROM {s}.conversation_messages
    WHERE tenant_id = $1 AND session_id = $2 AND ($3::text IS NULL OR user_id = $3)
    RETURNING user_id
), branches AS (
    DELETE FROM {s}.conversation_branches
    WHERE tenant_id = $1 AND session_id = $2 AND ($3::text IS NULL OR user_id = $3)
), audit AS (
    INSERT INTO {s}.convostore_audit (action, actor, tenant_id, user_id, session_id, rows)
    SELECT 'clear_session', $4, $1, min(user_id), $2, count(*) FROM gone HAVING count(*) > 0
)
SELECT count(*) FROM gone
"""

DELETE_SESSION = """
WITH gone AS (
    DELETE FROM {s}.agent_sessions WHERE tenant_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)
    RETURNING user_id
), audit AS (
    INSERT INTO {s}.convostore_audit (action, actor, tenant_id, user_id, session_id, rows)
    SELECT 'delete_session', $4, $1, user_id, $2, 1 FROM gone
)
SELECT count(*) FROM gone
"""

UPDATE_METADATA = f"""
UPDATE {{s}}.agent_sessions SET metadata = metadata || $4::jsonb, updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)
RETURNING {_SESSION_COLUMNS}
"""

# $4: a sliding expiry (ttl), $5: a fixed one; neither: now() + NULL clears it.
SET_EXPIRY = f"""
UPDATE {{s}}.agent_sessions
   SET ttl = $4::interval, expires_at = now() + $5::interval
WHERE tenant_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)
RETURNING {_SESSION_COLUMNS}
"""

# A user's sessions, newest first, keyset-paginated by (updated_at, id) on
# idx_sessions_user_id; with up to $7 latest messages each, in the same round trip.
_USER_PAGE = """
WITH page AS (
    SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
    FROM {s}.agent_sessions
    WHERE tenant_id = $1 AND user_id = $2
      AND (updated_at, id) < (COALESCE($3::timestamptz, 'infinity'), COALESCE($4::text, ''))
      AND ($6::text IS NULL OR agent_name = $6)
    ORDER BY updated_at DESC, id DESC
    LIMIT $5
)
"""

# A tenant's sessions (of one user, of one agent, updated since $7, whose metadata holds $8),
# newest first, keyset-paginated by (updated_at, id) on idx_sessions_recent.
_SESSIONS_PAGE = """
WITH page AS (
    SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
    FROM {s}.agent_sessions
    WHERE tenant_id = $1
      AND (updated_at, id) < (COALESCE($3::timestamptz, 'infinity'), COALESCE($4::text, ''))
      AND ($2::text IS NULL OR user_id = $2)
      AND ($6::text IS NULL OR agent_name = $6)
      AND ($7::timestamptz IS NULL OR updated_at >= $7)
      AND ($8::jsonb IS NULL OR metadata @> $8::jsonb)
    ORDER BY updated_at DESC, id DESC
    LIMIT $5
)
"""

USER_SESSIONS_WITH_MESSAGES = (
    _USER_PAGE
    + """
SELECT p.id, p.user_id, p.agent_name, p.metadata, p.created_at, p.updated_at, p.expires_at, p.ttl,
       m.id AS m_id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw,
       m.created_at AS m_created_at, m.key_id, m.sealed, m.branch, m.covers_from, m.covers_to
FROM page p
LEFT JOIN LATERAL (
    SELECT * FROM {s}.conversation_messages x
    WHERE x.tenant_id = $1 AND x.session_id = p.id AND x.branch = 'main'
    ORDER BY x.seq DESC
    LIMIT $7
) m ON true
ORDER BY p.updated_at DESC, p.id DESC, m.seq
"""
)

_WITH_COUNTS = """
SELECT p.*, (SELECT count(*) FROM {s}.conversation_messages x WHERE x.tenant_id = $1 AND x.session_id = p.id)
       AS message_count
FROM page p
ORDER BY p.updated_at DESC, p.id DESC
"""
USER_SESSIONS = _USER_PAGE + _WITH_COUNTS
LIST_SESSIONS = _SESSIONS_PAGE + _WITH_COUNTS

# On distributed tables (Citus) a lateral join and a correlated subquery cannot reach across
# shards: the page is computed first, then the latest messages (or counts) of its sessions.
USER_SESSIONS_WITH_MESSAGES_DIST = (
    _USER_PAGE
    + """, latest AS (
    SELECT x.session_id, x.id, x.seq, x.role, x.content, x.tool_calls, x.tool_call_id, x.raw, x.created_at,
           x.key_id, x.sealed, x.branch, x.covers_from, x.covers_to,
           row_number() OVER (PARTITION BY x.session_id ORDER BY x.seq DESC) AS rn
    FROM {s}.conversation_messages x
    WHERE x.tenant_id = $1 AND x.session_id IN (SELECT id FROM page) AND x.branch = 'main'
)
SELECT p.id, p.user_id, p.agent_name, p.metadata, p.created_at, p.updated_at, p.expires_at, p.ttl,
       m.id AS m_id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw,
       m.created_at AS m_created_at, m.key_id, m.sealed, m.branch, m.covers_from, m.covers_to
FROM page p
LEFT JOIN latest m ON m.session_id = p.id AND ($7::bigint IS NULL OR m.rn <= $7)
ORDER BY p.updated_at DESC, p.id DESC, m.seq
"""
)

_WITH_COUNTS_DIST = """, counts AS (
    SELECT session_id, count(*) AS n FROM {s}.conversation_messages
    WHERE tenant_id = $1 AND session_id IN (SELECT id FROM page) GROUP BY session_id
)
SELECT p.*, COALESCE(c.n, 0) AS message_count FROM page p LEFT JOIN counts c ON c.session_id = p.id
ORDER BY p.updated_at DESC, p.id DESC
"""
USER_SESSIONS_DIST = _USER_PAGE + _WITH_COUNTS_DIST
LIST_SESSIONS_DIST = _SESSIONS_PAGE + _WITH_COUNTS_DIST

# -- branches (convostore._branches decides; these read and change) ----------------------------

# The session's row, locked for the transaction: forks, deletions, clears and pops of a
# forked session serialize with each other and with appends (which lock it too).
LOCK_SESSION = """
SELECT user_id, forked, last_seq FROM {s}.agent_sessions WHERE tenant_id = $1 AND id = $2 FOR UPDATE
"""

SESSION_OWNER_FORKED = "SELECT user_id, forked FROM {s}.agent_sessions WHERE tenant_id = $1 AND id = $2"

BRANCH_ROWS = """
SELECT name, parent, fork_seq, created_at, deleted_at, cleared_to FROM {s}.conversation_branches
WHERE session_id = $2 AND tenant_id = $1
"""

# Each branch's own message count (for listing).
BRANCH_COUNTS = """
SELECT branch, count(*) AS n FROM {s}.conversation_messages WHERE session_id = $2 AND tenant_id = $1 GROUP BY branch
"""

# The newest row of a line ($3 branches, $4 their last seqs) above floor $5 and at or below $6.
_IN_LINE = (
    "m.session_id = $2 AND m.tenant_id = $1 AND m.seq > $5 AND m.seq <= $6 "
    "AND m.seq <= ($4::bigint[])[array_position($3::text[], m.branch::text)]"
)
LINE_LAST = f"""
SELECT m.seq, m.branch FROM {{s}}.conversation_messages m WHERE {_IN_LINE} ORDER BY m.seq DESC LIMIT 1
"""

POP_SEQ = """
DELETE FROM {s}.conversation_messages m WHERE m.session_id = $2 AND m.tenant_id = $1 AND m.seq = $3
RETURNING m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.key_id, m.sealed,
          m.branch, m.covers_from, m.covers_to
"""

# A fork starts with its parent's floor: what the parent had cleared stays out of its view.
INSERT_BRANCH = """
INSERT INTO {s}.conversation_branches (session_id, tenant_id, name, user_id, parent, fork_seq, cleared_to)
VALUES ($2, $1, $3, $4, $5, $6, nullif($7::bigint, 0))
ON CONFLICT DO NOTHING
RETURNING created_at
"""

MARK_FORKED = "UPDATE {s}.agent_sessions SET forked = true, updated_at = now() WHERE tenant_id = $1 AND id = $2"

# 'main' gets a row the first time it is deleted or cleared (the others have theirs).
DELETE_BRANCH = """
WITH updated AS (
    UPDATE {s}.conversation_branches SET deleted_at = now()
    WHERE session_id = $2 AND tenant_id = $1 AND name = $3
    RETURNING 1
)
INSERT INTO {s}.conversation_branches (session_id, tenant_id, name, user_id, deleted_at)
SELECT $2, $1, $3, $4, now() WHERE NOT EXISTS (SELECT 1 FROM updated)
"""

CLEAR_BRANCH = """
WITH updated AS (
    UPDATE {s}.conversation_branches SET cleared_to = $5
    WHERE session_id = $2 AND tenant_id = $1 AND name = $3
    RETURNING 1
)
INSERT INTO {s}.conversation_branches (session_id, tenant_id, name, user_id, cleared_to)
SELECT $2, $1, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM updated)
"""

# A branch's own rows above $4 (what no live branch shares any more).
TRIM_BRANCH = """
WITH gone AS (
    DELETE FROM {s}.conversation_messages WHERE session_id = $2 AND tenant_id = $1 AND branch = $3 AND seq > $4
    RETURNING 1
)
SELECT count(*) FROM gone
"""

DROP_BRANCHES = (
    "DELETE FROM {s}.conversation_branches WHERE session_id = $2 AND tenant_id = $1 AND name = ANY($3::text[])"
)

# -- usage ---------------------------------------------------------------------------------------

# A turn's usage, with its session's owner and agent; a retry (the same id) stores nothing.
RECORD_USAGE = """
INSERT INTO {s}.conversation_usage
    (session_id, tenant_id, id, user_id, agent_name, branch, model, requests, input_tokens, output_tokens,
     reasoning_tokens, cached_tokens, duration_seconds)
SELECT s.id, s.tenant_id, $4, s.user_id, s.agent_name, $5, $6, $7, $8, $9, $10, $11, $12
FROM {s}.agent_sessions s
WHERE s.tenant_id = $1 AND s.id = $2 AND ($3::text IS NULL OR s.user_id = $3)
ON CONFLICT (session_id, tenant_id, id) DO NOTHING
RETURNING 1
"""

# Totals by $6: 'session', 'user', 'agent' or 'day' (UTC). $1 tenant (NULL: every tenant),
# $2 user, $3 session, $4 agent, $5 and $7: from (inclusive) and until (exclusive).
USAGE_TOTALS = """
SELECT tenant_id,
       CASE $6::text WHEN 'session' THEN session_id::text WHEN 'user' THEN user_id::text
                     WHEN 'agent' THEN agent_name::text
                     ELSE to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') END AS key,
       count(*) AS turns, sum(requests)::bigint AS requests, sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens, sum(reasoning_tokens)::bigint AS reasoning_tokens,
       sum(cached_tokens)::bigint AS cached_tokens, coalesce(sum(duration_seconds), 0)::float8 AS duration
FROM {s}.conversation_usage
WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR session_id = $3) AND ($4::text IS NULL OR agent_name = $4)
  AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($7::timestamptz IS NULL OR created_at < $7)
GROUP BY 1, 2
ORDER BY 1, 2
"""

# -- retention ---------------------------------------------------------------------------------

# The cutoff of an idle-session cleanup is fixed once, at its start, from the server's clock:
# every batch (and a dry run's count) then agrees on what "idle" means.
IDLE_CUTOFF = "SELECT now() - $1::interval"

# Bounded batch deletes: SKIP LOCKED leaves sessions that live writers hold to a later batch
# instead of waiting on them; each batch is its own short transaction. $1 is the tenant
# (NULL: every tenant, an operator's cleanup).
DELETE_IDLE_BATCH = """
WITH victims AS (
    SELECT tenant_id, id FROM {s}.agent_sessions
    WHERE updated_at < $2::timestamptz
      AND ($1::text IS NULL OR tenant_id = $1)
      AND ($3::text IS NULL OR user_id = $3)
      AND ($4::text IS NULL OR agent_name = $4)
    ORDER BY updated_at
    LIMIT $5
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {s}.agent_sessions s USING victims v WHERE s.tenant_id = v.tenant_id AND s.id = v.id
    RETURNING s.id
), audit AS (
    INSERT INTO {s}.convostore_audit (action, actor, tenant_id, user_id, rows, details)
    SELECT 'delete_idle_sessions', $6, $1, $3, count(*), jsonb_build_object('idle_before', $2::timestamptz)
    FROM gone HAVING count(*) > 0
)
SELECT id FROM gone
"""

COUNT_IDLE = """
SELECT count(*) FROM {s}.agent_sessions
WHERE updated_at < $2::timestamptz
  AND ($1::text IS NULL OR tenant_id = $1)
  AND ($3::text IS NULL OR user_id = $3)
  AND ($4::text IS NULL OR agent_name = $4)
"""

# Fixed expiries by idx_sessions_expires_at, sliding ones by idx_sessions_sliding.
DELETE_EXPIRED_BATCH = """
WITH fixed AS (
    SELECT tenant_id, id FROM {s}.agent_sessions
    WHERE expires_at <= now() AND ($1::text IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR user_id = $3)
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), sliding AS (
    SELECT tenant_id, id FROM {s}.agent_sessions
    WHERE ttl IS NOT NULL AND updated_at <= now() - ttl
      AND ($1::text IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR user_id = $3)
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), victims AS (
    SELECT * FROM fixed UNION SELECT * FROM sliding
), gone AS (
    DELETE FROM {s}.agent_sessions s USING victims v WHERE s.tenant_id = v.tenant_id AND s.id = v.id
    RETURNING s.id
), audit AS (
    INSERT INTO {s}.convostore_audit (action, actor, tenant_id, user_id, rows)
    SELECT 'delete_expired_sessions', $4, $1, $3, count(*) FROM gone HAVING count(*) > 0
)
SELECT id FROM gone
"""

DELETE_USER_BATCH = """
WITH victims AS (
    SELECT id FROM {s}.agent_sessions WHERE tenant_id = $1 AND user_id = $2 LIMIT $3 FOR UPDATE
), messages AS (
    DELETE FROM {s}.conversation_messages m USING victims v
    WHERE m.tenant_id = $1 AND m.session_id = v.id
    RETURNING 1
), sessions AS (
    DELETE FROM {s}.agent_sessions s USING victims v WHERE s.tenant_id = $1 AND s.id = v.id
    RETURNING s.id
), counts AS (
    SELECT (SELECT count(*) FROM sessions) AS sessions, (SELECT count(*) FROM messages) AS messages
), audit AS (
    INSERT INTO {s}.convostore_audit (action, actor, tenant_id, user_id, rows, details)
    SELECT 'delete_user', $4, $1, $2, c.sessions, jsonb_build_object('messages', c.messages)
    FROM counts c WHERE c.sessions > 0
)
SELECT sessions, messages FROM counts
"""

# On distributed tables rows cannot be locked across shards (FOR UPDATE): the batch is
# chosen without locks and each row is checked again as it is deleted (an idle one is still
# idle; an expired one still has the updated_at seen), so a session that a writer touched
# meanwhile stays.
DELETE_IDLE_BATCH_DIST = """
WITH victims AS (
    SELECT tenant_id, id FROM {s}.agent_sessions
    WHERE updated_at < $2::timestamptz
      AND ($1::text IS NULL OR tenant_id = $1)
      AND ($3::text IS NULL OR user_id = $3)
      AND ($4::text IS NULL OR agent_name = $4)
    ORDER BY updated_at
    LIMIT $5
), gone AS (
    DELETE FROM {s}.agent_sessions s
    WHERE (s.tenant_id, s.id) IN (SELECT tenant_id, id FROM victims) AND s.updated_at < $2::timestamptz
    RETURNING s.id
), audit AS (
    INSERT INTO {s}.convostore_audit (action, actor, tenant_id, user_id, rows, details)
    SELECT 'delete_idle_sessions', $6, $1, $3, count(*), jsonb_build_object('idle_before', $2::timestamptz)
    FROM gone HAVING count(*) > 0
)
SELECT id FROM gone
"""

DELETE_EXPIRED_BATCH_DIST = """
WITH fixed AS (
    SELECT tenant_id, id, updated_at FROM {s}.agent_sessions
    WHERE expires_at <= now() AND ($1::text IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR user_id = $3)
    ORDER BY expires_at
    LIMIT $2
), sliding AS (
    SELECT tenant_id, id, updated_at FROM {s}.agent_sessions
    WHERE ttl IS NOT NULL AND updated_at <= now() - ttl
      AND ($1::text IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR user_id = $3)
    ORDER BY updated_at
    LIMIT $2
), gone AS (
    DELETE FROM {s}.agent_sessions s
    WHERE (s.tenant_id, s.id, s.updated_at) IN (SELECT * FROM fixed UNION SELECT * FROM sliding)
    RETURNING s.id
), audit AS (
    INSERT INTO {s}.convostore_audit (action, actor, tenant_id, user_id, rows)
    SELECT 'delete_expired_sessions', $4, $1, $3, count(*) FROM gone HAVING count(*) > 0
)
SELECT id FROM gone
"""

DELETE_USER_BATCH_DIST = """
WITH victims AS (
    SELECT id FROM {s}.agent_sessions WHERE tenant_id = $1 AND user_id = $2 LIMIT $3
), messages AS (
    DELETE FROM {s}.conversation_messages m WHERE m.tenant_id = $1 AND m.session_id IN (SELECT id FROM victims)
    RETURNING 1
), sessions AS (
    DELETE FROM {s}.agent_sessions s WHERE s.tenant_id = $1 AND s.id IN (SELECT id FROM victims) AND s.user_id = $2
    RETURNING s.id
), counts AS (
    SELECT (SELECT count(*) FROM sessions) AS sessions, (SELECT count(*) FROM messages) AS messages
), audit AS (
    INSERT INTO {s}.convostore_audit (action, actor, tenant_id, user_id, rows, details)
    SELECT 'delete_user', $4, $1, $2, c.sessions, jsonb_build_object('messages', c.messages)
    FROM counts c WHERE c.sessions > 0
)
SELECT sessions, messages FROM counts
"""

AUDIT = """
INSERT INTO {s}.convostore_audit (action, actor, tenant_id, user_id, session_id, rows, details)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
"""

# -- export / import (convostore.transfer) --------------------------------------------------

EXPORT_SESSIONS_PAGE = """
SELECT tenant_id, id, user_id, agent_name, metadata, created_at, updated_at, expires_at,
       extract(epoch FROM ttl)::float8 AS ttl_seconds, last_seq
FROM {s}.agent_sessions
WHERE ($1::text IS NULL OR tenant_id = $1)
  AND ($2::text IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR id = $3)
  AND (tenant_id, id) > (COALESCE($4::text, ''), COALESCE($5::text, ''))
ORDER BY tenant_id, id
LIMIT $6
"""

EXPORT_MESSAGES_PAGE = f"""
SELECT {_MESSAGE_COLUMNS}, tokens FROM {{s}}.conversation_messages
WHERE tenant_id = $1 AND session_id = $2 AND seq > $3
ORDER BY seq
LIMIT $4
"""

# Import compares before it writes: what is stored under the file's session ids, and under
# its (session, message id) and (session, seq) keys. Rows found identical are skipped, rows
# found different are conflicts; only absent rows are inserted.
IMPORT_STORED_SESSIONS = """
SELECT id, user_id, agent_name FROM {s}.agent_sessions WHERE tenant_id = $1 AND id = ANY($2::text[])
"""

_STORED = (
    "m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.key_id, m.sealed, "
    "m.branch, m.covers_from, m.covers_to, m.tokens, m.session_id"
)
IMPORT_STORED_MESSAGES = f"""
SELECT {_STORED} FROM unnest($2::text[], $3::text[]) AS k(session_id, id)
JOIN {{s}}.conversation_messages m ON m.tenant_id = $1 AND m.session_id = k.session_id AND m.id = k.id
UNION
SELECT {_STORED} FROM unnest($2::text[], $4::bigint[]) AS k(session_id, seq)
JOIN {{s}}.conversation_messages m ON m.tenant_id = $1 AND m.session_id = k.session_id AND m.seq = k.seq
"""

IMPORT_SESSIONS = """
INSERT INTO {s}.agent_sessions
    (tenant_id, id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl, last_seq)
SELECT $1, id, user_id, agent_name, metadata, created_at, updated_at, expires_at,
       make_interval(secs => ttl_seconds), last_seq
FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::timestamptz[], $7::timestamptz[],
            $8::timestamptz[], $9::float8[], $10::bigint[])
    AS t(id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl_seconds, last_seq)
"""

# Messages take their owner from their session (imported or present).
IMPORT_MESSAGES = """
INSERT INTO {s}.conversation_messages
    (tenant_id, session_id, seq, id, user_id, role, content, tool_calls, tool_call_id, raw, created_at, key_id, sealed,
     branch, covers_from, covers_to, tokens, kind)
SELECT $1, t.session_id, t.seq, t.id, s.user_id, t.role, t.content, t.tool_calls::jsonb, t.tool_call_id,
       t.raw::jsonb, t.created_at, t.key_id, t.sealed, t.branch, t.covers_from, t.covers_to, t.tokens, t.kind
FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::timestamptz[], $11::text[], $12::bytea[],
            $13::text[], $14::bigint[], $15::bigint[], $16::int[], $17::text[])
    AS t(session_id, seq, id, role, content, tool_calls, tool_call_id, raw, created_at, key_id, sealed,
         branch, covers_from, covers_to, tokens, kind)
JOIN {s}.agent_sessions s ON s.tenant_id = $1 AND s.id = t.session_id
"""

# Branches of imported sessions (compared with the stored ones first), which marks their
# sessions forked.
IMPORT_BRANCHES = """
WITH added AS (
    INSERT INTO {s}.conversation_branches
        (session_id, tenant_id, name, user_id, parent, fork_seq, created_at, deleted_at, cleared_to)
    SELECT t.session_id, $1, t.name, s.user_id, t.parent, t.fork_seq, t.created_at, t.deleted_at, t.cleared_to
    FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[], $7::timestamptz[], $8::bigint[])
        AS t(session_id, name, parent, fork_seq, created_at, deleted_at, cleared_to)
    JOIN {s}.agent_sessions s ON s.tenant_id = $1 AND s.id = t.session_id
    ON CONFLICT DO NOTHING
    RETURNING session_id
)
UPDATE {s}.agent_sessions s SET forked = true
WHERE s.tenant_id = $1 AND s.id = ANY($2::text[]) AND s.id IN (SELECT session_id FROM added)
"""

IMPORT_STORED_BRANCHES = """
SELECT session_id, name, parent, fork_seq, deleted_at, cleared_to FROM {s}.conversation_branches
WHERE tenant_id = $1 AND session_id = ANY($2::text[])
"""

# Keeps the counter ahead of imported seqs, so later appends continue after them, and marks
# sessions holding summaries compacted (their reads then take the general path).
RAISE_LAST_SEQ = """
UPDATE {s}.agent_sessions s
   SET last_seq = greatest(s.last_seq, m.max_seq), compacted = s.compacted OR m.compacted
FROM (SELECT session_id, max(seq) AS max_seq, bool_or(covers_from IS NOT NULL) AS compacted
      FROM {s}.conversation_messages
      WHERE tenant_id = $1 AND session_id = ANY($2::text[]) GROUP BY session_id) m
WHERE s.tenant_id = $1 AND s.id = m.session_id
"""

# -- key rotation (convostore rekey) ----------------------------------------------------------

# The next page of messages not sealed with the current key and layout ($5): sealed with
# another key or layout, or (with $6) not sealed at all; in key order, after ($2, $3, $4).
REKEY_PAGE = """
SELECT tenant_id, session_id, seq, id, role, content, tool_calls, tool_call_id, raw, key_id, sealed, branch
FROM {s}.conversation_messages
WHERE ($1::text IS NULL OR tenant_id = $1)
  AND (session_id, tenant_id, seq) > ($2::text, $3::text, $4::bigint)
  AND key_id IS DISTINCT FROM $5
  AND ($6 OR sealed IS NOT NULL)
ORDER BY session_id, tenant_id, seq
LIMIT $7
"""

# Each row re-sealed only if it still has the key it was read with: a concurrent rekey (or
# a retry) never seals a row twice.
REKEY_UPDATE = """
UPDATE {s}.conversation_messages m
   SET content = u.content, tool_calls = NULL, raw = NULL, key_id = u.key_id, sealed = u.sealed
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bytea[])
       AS u(tenant_id, session_id, seq, old_key, content, key_id, sealed)
 WHERE m.session_id = u.session_id AND m.tenant_id = u.tenant_id AND m.seq = u.seq
   AND m.key_id IS NOT DISTINCT FROM u.old_key
"""

# -- search ----------------------------------------------------------------------------------

# Messages matching $5 (web search syntax: "quoted phrases", or, -exclusions), best first,
# with a snippet whose hits are wrapped in $9 and $10. $1 tenant (NULL: every tenant), $2 user,
# $3 session, $4 agent, $6 and $7 limit and offset, $8 the snippet's length in words. The
# agent is the session's: the matching messages are found first, then their sessions.
# Search reads what messages say through the expression that SEARCH_INDEX_CREATE indexes (the
# first 100,000 characters: a tsvector has a size limit; never a sealed message, whose content
# is a digest). Without that index (`convostore search-index create`), a search reads every
# message of its scope: correct, but slow on a large store; with it, every append pays for
# indexing what it writes (see the README's figures). The planner uses the index only for
# this exact expression and predicate.
SEARCH = """
WITH q AS (SELECT websearch_to_tsquery('english', $5) AS query),
hits AS (
    SELECT m.tenant_id, m.session_id, m.seq, m.id, m.role, m.branch, m.created_at, m.user_id, m.content,
           ts_rank_cd(to_tsvector('english', left(m.content, 100000)), q.query) AS rank
    FROM {s}.conversation_messages m, q
    WHERE to_tsvector('english', left(m.content, 100000)) @@ q.query AND m.sealed IS NULL
      AND ($1::text IS NULL OR m.tenant_id = $1) AND ($2::text IS NULL OR m.user_id = $2)
      AND ($3::text IS NULL OR m.session_id = $3)
      AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM {s}.agent_sessions s
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
"""

# -- state beside conversations (app and user state) ---------------------------------------

SEARCH_INDEX_CREATE = """
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_messages_search ON {s}.conversation_messages
    USING gin (to_tsvector('english', left(content, 100000))) WHERE sealed IS NULL
"""
SEARCH_INDEX_DROP = "DROP INDEX CONCURRENTLY IF EXISTS {s}.idx_messages_search"
# A valid index: CREATE INDEX CONCURRENTLY leaves an invalid one behind when it fails.
SEARCH_INDEX_STATE = """
SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE c.relname = 'idx_messages_search' AND c.relnamespace = $1::regnamespace
"""

GET_STATE = "SELECT state FROM {s}.convostore_state WHERE tenant_id = $1 AND agent_name = $2 AND user_id = $3"

# $4 merged into the stored state (top-level keys), created if absent; the new state returned.
UPDATE_STATE = """
INSERT INTO {s}.convostore_state AS t (tenant_id, agent_name, user_id, state) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (tenant_id, agent_name, user_id) DO UPDATE SET state = t.state || $4::jsonb, updated_at = now()
RETURNING state
"""

# -- API keys (convostore.keys) ----------------------------------------------------------------

INSERT_KEY = """
INSERT INTO {s}.convostore_api_keys (id, secret_hash, name, tenant_id, user_id) VALUES ($1, $2, $3, $4, $5)
RETURNING id, name, tenant_id, user_id, created_at, revoked_at
"""

KEY = "SELECT secret_hash, name, tenant_id, user_id, created_at, revoked_at FROM {s}.convostore_api_keys WHERE id = $1"

KEYS = """
SELECT id, name, tenant_id, user_id, created_at, revoked_at FROM {s}.convostore_api_keys
WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at, id
"""

REVOKE_KEY = """
UPDATE {s}.convostore_api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
  AND ($2::text IS NULL OR tenant_id = $2)
RETURNING id
"""

# -- stats ---------------------------------------------------------------------------------

# $1: the tenant (NULL: every tenant), $2: the user (NULL: every user).
_IN_SCOPE = "($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2)"
STATS = f"""
WITH s AS (SELECT * FROM {{s}}.agent_sessions WHERE {_IN_SCOPE})
SELECT (SELECT count(*) FROM s) AS sessions,
       (SELECT count(*) FROM {{s}}.conversation_messages WHERE {_IN_SCOPE}) AS messages,
       (SELECT count(DISTINCT (tenant_id, user_id)) FROM s) AS users,
       (SELECT min(created_at) FROM s) AS oldest_session,
       (SELECT max(updated_at) FROM s) AS newest_activity,
       (SELECT count(*) FROM s WHERE expires_at IS NOT NULL OR ttl IS NOT NULL) AS with_expiry
"""

STATS_BY_AGENT = f"""
SELECT s.agent_name, count(*) AS sessions, COALESCE(sum(mc.n), 0)::bigint AS messages
FROM (SELECT * FROM {{s}}.agent_sessions WHERE {_IN_SCOPE}) s
LEFT JOIN (SELECT tenant_id, session_id, count(*) AS n FROM {{s}}.conversation_messages
           WHERE {_IN_SCOPE} GROUP BY tenant_id, session_id) mc
       ON mc.tenant_id = s.tenant_id AND mc.session_id = s.id
GROUP BY s.agent_name
ORDER BY sessions DESC, s.agent_name
"""

STATS_SIZES = """
SELECT c.relname AS name, pg_table_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind = 'r'
ORDER BY c.relname
"""

# A distributed table's own relation on the coordinator is an empty shell: sum its shards.
STATS_SIZES_DIST = """
SELECT c.relname AS name,
       CASE WHEN d.logicalrelid IS NULL THEN pg_table_size(c.oid) ELSE citus_table_size(c.oid) END AS table_bytes,
       CASE WHEN d.logicalrelid IS NULL THEN pg_indexes_size(c.oid)
            ELSE citus_total_relation_size(c.oid) - citus_table_size(c.oid) END AS index_bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_dist_partition d ON d.logicalrelid = c.oid
WHERE n.nspname = $1 AND c.relkind = 'r'
ORDER BY c.relname
"""

# On distributed tables, the functions that calls are delegated with (append, read, compact)
# plan each statement with the call's values (custom plans), as Citus plans a distributed
# statement from them. On the node holding the shard, Citus 12.1.12, 13.2.1, 13.2.2, 14.0.0
# and 14.0.1 add a fresh copy of a reused generic plan's local plan to it on every run
# (upstream pull request 8824 fixes that): the backend of a pooled connection grew by about
# 144 KB per append and 44 KB per read until it closed, and the statements were planned
# again all the same. (Where Citus is fixed, reused plans would make a lone append on the
# worker about 1.45x faster: measured with the fix applied to 13.2.2; see the README.)
# And convostore_append_sharded (distributed by its session argument too) is delegated to
# the node holding that session. Applied by migration 11 (a schema distributed before it) and
# after distributing or any migration that creates a function again; a schema that is not
# distributed is left as it is.
FIT_TO_CITUS = """
DO $fit$
DECLARE
    f regprocedure;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                    WHERE logicalrelid = to_regclass('{s}.agent_sessions')) THEN
        RETURN;
    END IF;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = to_regnamespace('{s}')
           AND p.proname IN ('convostore_append', 'convostore_read', 'convostore_compact')
           AND NOT coalesce('plan_cache_mode=force_custom_plan' = ANY (p.proconfig), false)
         ORDER BY p.proname
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_custom_plan', f);
    END LOOP;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = to_regnamespace('{s}') AND p.proname = 'convostore_append_sharded'
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_object o
                            WHERE o.classid = 'pg_catalog.pg_proc'::regclass AND o.objid = p.oid
                              AND o.distribution_argument_index IS NOT NULL)
    LOOP
        PERFORM create_distributed_function(f::text, 'p_route', colocate_with => '{s}.agent_sessions');
    END LOOP;
END
$fit$;
"""

# The hash range of each shard of the sessions table ($1, a qualified name) and the node
# holding it, for routing calls straight there (convostore._routing); "here" when it is the
# node this runs on; the database by its own name (a pooler in front may call it otherwise).
SHARD_MAP = """
SELECT s.shardminvalue::int AS low, s.shardmaxvalue::int AS high, n.nodename AS host, n.nodeport AS port,
       p.groupid = (SELECT groupid FROM pg_dist_local_group) AS here, current_database() AS database
FROM pg_dist_shard s
JOIN pg_dist_placement p ON p.shardid = s.shardid
JOIN pg_dist_node n ON n.groupid = p.groupid
WHERE s.logicalrelid = to_regclass($1) AND n.isactive AND n.noderole = 'primary'
"""

# Whether the database runs Citus, and then whether the sessions table ($1, a qualified
# name) is distributed (its catalog exists only with the extension).
HAS_CITUS = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
IS_DISTRIBUTED = "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass($1))"


@dataclass(frozen=True, slots=True)
class Queries:
    """The statements above with the schema substituted; built once per store."""

    append: str
    append_sharded: str
    append_one: str
    append_rows: str
    read: str
    compact: str
    session_owner: str
    create_session: str
    get_session: str
    pop_message: str
    clear_session: str
    delete_session: str
    update_metadata: str
    set_expiry: str
    user_sessions_with_messages: str
    user_sessions: str
    list_sessions: str
    idle_cutoff: str
    delete_idle_batch: str
    count_idle: str
    delete_expired_batch: str
    delete_user_batch: str
    audit: str
    export_sessions_page: str
    export_messages_page: str
    import_stored_sessions: str
    import_stored_messages: str
    import_sessions: str
    import_messages: str
    import_branches: str
    import_stored_branches: str
    raise_last_seq: str
    rekey_page: str
    rekey_update: str
    stats: str
    stats_by_agent: str
    stats_sizes: str
    lock_session: str
    session_owner_forked: str
    branch_rows: str
    branch_counts: str
    line_last: str
    pop_seq: str
    insert_branch: str
    mark_forked: str
    delete_branch: str
    clear_branch: str
    trim_branch: str
    drop_branches: str
    record_usage: str
    search: str
    search_index_create: str
    search_index_drop: str
    search_index_state: str
    get_state: str
    update_state: str
    insert_key: str
    key: str
    keys: str
    revoke_key: str
    usage_totals: str


# The statements whose shape differs on distributed tables (the rest are the same).
DISTRIBUTED_VARIANTS = frozenset(
    {
        "user_sessions_with_messages",
        "user_sessions",
        "list_sessions",
        "delete_idle_batch",
        "delete_expired_batch",
        "delete_user_batch",
        "stats_sizes",
    }
)


def render(schema: str, *, distributed: bool = False) -> Queries:
    """Return the statements for *schema* (validated and quoted here, once), in the shapes
    of distributed tables if *distributed*."""
    quoted = quote_ident(schema)
    templates = globals()

    def template(name: str) -> str:
        key = name.upper() + ("_DIST" if distributed and name in DISTRIBUTED_VARIANTS else "")
        return str(templates[key]).replace("{s}", quoted)

    return Queries(**{f.name: template(f.name) for f in fields(Queries)})
