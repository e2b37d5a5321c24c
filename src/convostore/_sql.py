"""Every SQL statement convostore runs, as named constants, and its PL/pgSQL functions.

Each template is the whole text that runs, written out (no fragments joined, no variants
generated): the one placeholder is ``{s}``, the schema, which :func:`in_schema` substitutes
once :func:`quote_ident` has validated and quoted it. Values always travel as ``$n``
parameters. The functions live in ``sql/*.sql`` (one file per function, read here), the
function registry installs them (:func:`convostore.migrations.install_functions`), and
``tests/sql/`` holds what every template renders to.

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
from dataclasses import dataclass
from importlib import resources

from .errors import ConfigurationError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def quote_ident(name: str) -> str:
    """Validate a schema name and return it double-quoted."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ConfigurationError(
            f"invalid schema name {name!r}: use 1-63 letters, digits or underscores, not starting with a digit"
        )
    return f'"{name}"'


def in_schema(template: str, quoted_schema: str) -> str:
    """*template* with the schema (as :func:`quote_ident` returned it) in place of ``{s}``."""
    return template.replace("{s}", quoted_schema)


# -- the functions (installed by the function registry) ----------------------------------------


def _read_sql(name: str) -> str:
    return (resources.files(__package__) / "sql" / f"{name}.sql").read_text(encoding="utf-8")


# Every function, by name, in the order the registry installs them (each file creates the
# function it is named after): the appends (convostore_append_sharded on distributed tables),
# the reads of history windows, and compaction. See each file for what the function does.
FUNCTIONS: dict[str, str] = {
    name: _read_sql(name)
    for name in (
        "convostore_append",
        "convostore_hold_shards",
        "convostore_append_sharded",
        "convostore_read",
        "convostore_compact",
    )
}
APPEND_FUNCTION = FUNCTIONS["convostore_append"]
APPEND_SHARDED_FUNCTION = FUNCTIONS["convostore_append_sharded"]
READ_FUNCTION = FUNCTIONS["convostore_read"]
COMPACT_FUNCTION = FUNCTIONS["convostore_compact"]
# Run after distributing, and after the registry installs a function (see the file).
FIT_TO_CITUS = _read_sql("fit_to_citus")

# What a compaction that replaced messages with nothing leaves: a marker of the range, itself
# never in the view (the functions spell it out).
MARKER_KIND = "convostore.empty_summary"

APPEND = (
    "SELECT * FROM {s}.convostore_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, "
    "$18, $19, $20)"
)
APPEND_SHARDED = (
    "SELECT * FROM {s}.convostore_append_sharded($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
    "$16, $17, $18, $19, $20)"
)
COMPACT = (
    "SELECT * FROM {s}.convostore_compact($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
)
READ = "SELECT * FROM {s}.convostore_read($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"

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


# -- sessions ---------------------------------------------------------------------------------

SESSION_OWNER = "SELECT user_id FROM {s}.agent_sessions WHERE tenant_id = $1 AND id = $2"

# A session expires at expires_at (a fixed expiry) or, with a ttl (a sliding one), ttl after
# its last activity: derived when read (convostore._rows), so that appends never write it.
CREATE_SESSION = """
INSERT INTO {s}.agent_sessions (tenant_id, id, user_id, agent_name, metadata, ttl, expires_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::interval, now() + $7::interval)
RETURNING id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
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

UPDATE_METADATA = """
UPDATE {s}.agent_sessions SET metadata = metadata || $4::jsonb, updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)
RETURNING id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
"""

# $4: a sliding expiry (ttl), $5: a fixed one; neither: now() + NULL clears it.
SET_EXPIRY = """
UPDATE {s}.agent_sessions
   SET ttl = $4::interval, expires_at = now() + $5::interval
WHERE tenant_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)
RETURNING id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
"""

# A user's sessions, newest first, keyset-paginated by (updated_at, id) on
# idx_sessions_user_id; with up to $7 latest messages each, in the same round trip.
USER_SESSIONS_WITH_MESSAGES = """
WITH page AS (
    SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
    FROM {s}.agent_sessions
    WHERE tenant_id = $1 AND user_id = $2
      AND (updated_at, id) < (COALESCE($3::timestamptz, 'infinity'), COALESCE($4::text, ''))
      AND ($6::text IS NULL OR agent_name = $6)
    ORDER BY updated_at DESC, id DESC
    LIMIT $5
)
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

# The same page with each session's message count.
USER_SESSIONS = """
WITH page AS (
    SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
    FROM {s}.agent_sessions
    WHERE tenant_id = $1 AND user_id = $2
      AND (updated_at, id) < (COALESCE($3::timestamptz, 'infinity'), COALESCE($4::text, ''))
      AND ($6::text IS NULL OR agent_name = $6)
    ORDER BY updated_at DESC, id DESC
    LIMIT $5
)
SELECT p.*, (SELECT count(*) FROM {s}.conversation_messages x WHERE x.tenant_id = $1 AND x.session_id = p.id)
       AS message_count
FROM page p
ORDER BY p.updated_at DESC, p.id DESC
"""

# A tenant's sessions (of one user, of one agent, updated since $7, whose metadata holds $8),
# newest first, keyset-paginated by (updated_at, id) on idx_sessions_recent, with their
# message counts.
LIST_SESSIONS = """
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
SELECT p.*, (SELECT count(*) FROM {s}.conversation_messages x WHERE x.tenant_id = $1 AND x.session_id = p.id)
       AS message_count
FROM page p
ORDER BY p.updated_at DESC, p.id DESC
"""

# On distributed tables (Citus) a lateral join and a correlated subquery cannot reach across
# shards: the page is computed first, then the latest messages (or counts) of its sessions.
USER_SESSIONS_WITH_MESSAGES_DIST = """
WITH page AS (
    SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
    FROM {s}.agent_sessions
    WHERE tenant_id = $1 AND user_id = $2
      AND (updated_at, id) < (COALESCE($3::timestamptz, 'infinity'), COALESCE($4::text, ''))
      AND ($6::text IS NULL OR agent_name = $6)
    ORDER BY updated_at DESC, id DESC
    LIMIT $5
)
, latest AS (
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

USER_SESSIONS_DIST = """
WITH page AS (
    SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl
    FROM {s}.agent_sessions
    WHERE tenant_id = $1 AND user_id = $2
      AND (updated_at, id) < (COALESCE($3::timestamptz, 'infinity'), COALESCE($4::text, ''))
      AND ($6::text IS NULL OR agent_name = $6)
    ORDER BY updated_at DESC, id DESC
    LIMIT $5
)
, counts AS (
    SELECT session_id, count(*) AS n FROM {s}.conversation_messages
    WHERE tenant_id = $1 AND session_id IN (SELECT id FROM page) GROUP BY session_id
)
SELECT p.*, COALESCE(c.n, 0) AS message_count FROM page p LEFT JOIN counts c ON c.session_id = p.id
ORDER BY p.updated_at DESC, p.id DESC
"""
LIST_SESSIONS_DIST = """
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
, counts AS (
    SELECT session_id, count(*) AS n FROM {s}.conversation_messages
    WHERE tenant_id = $1 AND session_id IN (SELECT id FROM page) GROUP BY session_id
)
SELECT p.*, COALESCE(c.n, 0) AS message_count FROM page p LEFT JOIN counts c ON c.session_id = p.id
ORDER BY p.updated_at DESC, p.id DESC
"""

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
LINE_LAST = """
SELECT m.seq, m.branch FROM {s}.conversation_messages m
WHERE m.session_id = $2 AND m.tenant_id = $1 AND m.seq > $5 AND m.seq <= $6
  AND m.seq <= ($4::bigint[])[array_position($3::text[], m.branch::text)]
ORDER BY m.seq DESC LIMIT 1
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

EXPORT_MESSAGES_PAGE = """
SELECT id, seq, role, content, tool_calls, tool_call_id, raw, created_at, key_id, sealed, branch, covers_from,
       covers_to, tokens
FROM {s}.conversation_messages
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

IMPORT_STORED_MESSAGES = """
SELECT m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.key_id, m.sealed,
       m.branch, m.covers_from, m.covers_to, m.tokens, m.session_id
FROM unnest($2::text[], $3::text[]) AS k(session_id, id)
JOIN {s}.conversation_messages m ON m.tenant_id = $1 AND m.session_id = k.session_id AND m.id = k.id
UNION
SELECT m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.key_id, m.sealed,
       m.branch, m.covers_from, m.covers_to, m.tokens, m.session_id
FROM unnest($2::text[], $4::bigint[]) AS k(session_id, seq)
JOIN {s}.conversation_messages m ON m.tenant_id = $1 AND m.session_id = k.session_id AND m.seq = k.seq
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

# A key's expiry is judged by the database's clock (`expired`), the one every server shares;
# sign_outs counts the sign-outs that ended the browser tokens issued before them.
INSERT_KEY = """
INSERT INTO {s}.convostore_api_keys (id, secret_hash, name, tenant_id, user_id, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + $6::interval)
RETURNING id, name, tenant_id, user_id, created_at, revoked_at, expires_at, sign_outs
"""

KEY = """
SELECT secret_hash, name, tenant_id, user_id, created_at, revoked_at, expires_at, sign_outs,
       coalesce(expires_at <= now(), false) AS expired
FROM {s}.convostore_api_keys WHERE id = $1
"""

KEYS = """
SELECT id, name, tenant_id, user_id, created_at, revoked_at, expires_at, sign_outs FROM {s}.convostore_api_keys
WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at, id
"""

SIGN_OUT = """
UPDATE {s}.convostore_api_keys SET sign_outs = sign_outs + 1 WHERE id = $1 RETURNING sign_outs
"""

REVOKE_KEY = """
UPDATE {s}.convostore_api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
  AND ($2::text IS NULL OR tenant_id = $2)
RETURNING id
"""

# -- stats ---------------------------------------------------------------------------------

# $1: the tenant (NULL: every tenant), $2: the user (NULL: every user).
STATS = """
WITH s AS (SELECT * FROM {s}.agent_sessions
           WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2))
SELECT (SELECT count(*) FROM s) AS sessions,
       (SELECT count(*) FROM {s}.conversation_messages
         WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2)) AS messages,
       (SELECT count(DISTINCT (tenant_id, user_id)) FROM s) AS users,
       (SELECT min(created_at) FROM s) AS oldest_session,
       (SELECT max(updated_at) FROM s) AS newest_activity,
       (SELECT count(*) FROM s WHERE expires_at IS NOT NULL OR ttl IS NOT NULL) AS with_expiry
"""

STATS_BY_AGENT = """
SELECT s.agent_name, count(*) AS sessions, COALESCE(sum(mc.n), 0)::bigint AS messages
FROM (SELECT * FROM {s}.agent_sessions
       WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2)) s
LEFT JOIN (SELECT tenant_id, session_id, count(*) AS n FROM {s}.conversation_messages
           WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2)
           GROUP BY tenant_id, session_id) mc
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
    sign_out: str
    usage_totals: str


# Each field of Queries and its template.
STATEMENTS: dict[str, str] = {
    "append": APPEND,
    "append_sharded": APPEND_SHARDED,
    "append_one": APPEND_ONE,
    "append_rows": APPEND_ROWS,
    "read": READ,
    "compact": COMPACT,
    "session_owner": SESSION_OWNER,
    "create_session": CREATE_SESSION,
    "get_session": GET_SESSION,
    "pop_message": POP_MESSAGE,
    "clear_session": CLEAR_SESSION,
    "delete_session": DELETE_SESSION,
    "update_metadata": UPDATE_METADATA,
    "set_expiry": SET_EXPIRY,
    "user_sessions_with_messages": USER_SESSIONS_WITH_MESSAGES,
    "user_sessions": USER_SESSIONS,
    "list_sessions": LIST_SESSIONS,
    "idle_cutoff": IDLE_CUTOFF,
    "delete_idle_batch": DELETE_IDLE_BATCH,
    "count_idle": COUNT_IDLE,
    "delete_expired_batch": DELETE_EXPIRED_BATCH,
    "delete_user_batch": DELETE_USER_BATCH,
    "audit": AUDIT,
    "export_sessions_page": EXPORT_SESSIONS_PAGE,
    "export_messages_page": EXPORT_MESSAGES_PAGE,
    "import_stored_sessions": IMPORT_STORED_SESSIONS,
    "import_stored_messages": IMPORT_STORED_MESSAGES,
    "import_sessions": IMPORT_SESSIONS,
    "import_messages": IMPORT_MESSAGES,
    "import_branches": IMPORT_BRANCHES,
    "import_stored_branches": IMPORT_STORED_BRANCHES,
    "raise_last_seq": RAISE_LAST_SEQ,
    "rekey_page": REKEY_PAGE,
    "rekey_update": REKEY_UPDATE,
    "stats": STATS,
    "stats_by_agent": STATS_BY_AGENT,
    "stats_sizes": STATS_SIZES,
    "lock_session": LOCK_SESSION,
    "session_owner_forked": SESSION_OWNER_FORKED,
    "branch_rows": BRANCH_ROWS,
    "branch_counts": BRANCH_COUNTS,
    "line_last": LINE_LAST,
    "pop_seq": POP_SEQ,
    "insert_branch": INSERT_BRANCH,
    "mark_forked": MARK_FORKED,
    "delete_branch": DELETE_BRANCH,
    "clear_branch": CLEAR_BRANCH,
    "trim_branch": TRIM_BRANCH,
    "drop_branches": DROP_BRANCHES,
    "record_usage": RECORD_USAGE,
    "search": SEARCH,
    "search_index_create": SEARCH_INDEX_CREATE,
    "search_index_drop": SEARCH_INDEX_DROP,
    "search_index_state": SEARCH_INDEX_STATE,
    "get_state": GET_STATE,
    "update_state": UPDATE_STATE,
    "insert_key": INSERT_KEY,
    "key": KEY,
    "keys": KEYS,
    "revoke_key": REVOKE_KEY,
    "sign_out": SIGN_OUT,
    "usage_totals": USAGE_TOTALS,
}

# The statements whose shape differs on distributed tables, and that shape.
DISTRIBUTED: dict[str, str] = {
    "user_sessions_with_messages": USER_SESSIONS_WITH_MESSAGES_DIST,
    "user_sessions": USER_SESSIONS_DIST,
    "list_sessions": LIST_SESSIONS_DIST,
    "delete_idle_batch": DELETE_IDLE_BATCH_DIST,
    "delete_expired_batch": DELETE_EXPIRED_BATCH_DIST,
    "delete_user_batch": DELETE_USER_BATCH_DIST,
    "stats_sizes": STATS_SIZES_DIST,
}


def templates(*, distributed: bool = False) -> dict[str, str]:
    """Each field of :class:`Queries` and its template, in the shapes of distributed tables
    if *distributed*."""
    return STATEMENTS | DISTRIBUTED if distributed else dict(STATEMENTS)


def render(schema: str, *, distributed: bool = False) -> Queries:
    """Return the statements for *schema* (validated and quoted here, once), in the shapes
    of distributed tables if *distributed*."""
    quoted = quote_ident(schema)
    return Queries(**{name: in_schema(t, quoted) for name, t in templates(distributed=distributed).items()})
