"""Every SQL statement convostore runs, as named constants.

Templates refer to tables as ``{s}.name``; :func:`render` substitutes the schema once, after
:func:`quote_ident` has validated and quoted it. Values always travel as ``$n`` parameters.

Shapes are chosen so that the tables can later be distributed by ``session_id`` (Citus):
every message statement filters by ``session_id``, every key on messages includes it, and
ordering uses a per-session counter kept on the session row, never a global sequence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from .errors import ConfigurationError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def quote_ident(name: str) -> str:
    """Validate a schema name and return it double-quoted."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ConfigurationError(
            f"invalid schema name {name!r}: use 1-63 letters, digits or underscores, not starting with a digit"
        )
    return f'"{name}"'


_MESSAGE_COLUMNS = "id, seq, role, content, tool_calls, tool_call_id, raw, created_at"
_SESSION_COLUMNS = "id, user_id, agent_name, metadata, created_at, updated_at, expires_at"

# Appending: one statement. The session row's UPDATE both allocates the batch's seq range
# (last_seq) and serialises appends per session, so seq is strictly increasing in commit
# order. A batch is atomic, so if its first id is stored the whole batch was: `replay`
# probes that one id, and a retried batch (same client-generated ids) then returns the rows
# stored the first time, flagging `conflict` where an id holds a different message. Any
# other reuse of an id is refused by the unique index, which rolls the statement back.
# Lookups are LATERAL ... LIMIT 1 so that they stay index probes whatever the statistics.
_APPEND_HEAD = """
WITH new AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::jsonb[])
        WITH ORDINALITY AS n(id, role, content, tool_calls, tool_call_id, raw, ord)
), replay AS (
    SELECT 1 FROM {s}.conversation_messages m
    WHERE m.session_id = $1 AND m.id = ($2::text[])[1]
    LIMIT 1
), prior AS (
    SELECT m.id, m.seq, m.created_at,
           (m.role, m.content, m.tool_calls, m.tool_call_id, m.raw)
               IS DISTINCT FROM (n.role, n.content, n.tool_calls, n.tool_call_id, n.raw) AS conflict
    FROM new n CROSS JOIN LATERAL (
        SELECT * FROM {s}.conversation_messages x WHERE x.session_id = $1 AND x.id = n.id LIMIT 1
    ) m
    WHERE EXISTS (SELECT 1 FROM replay)
), bump AS (
"""
_APPEND_TAIL = """
), ins AS (
    INSERT INTO {s}.conversation_messages
        (session_id, seq, id, role, content, tool_calls, tool_call_id, raw)
    SELECT $1, bump.base + new.ord, new.id, new.role, new.content, new.tool_calls,
           new.tool_call_id, new.raw
    FROM bump CROSS JOIN new
    RETURNING id, seq, created_at
)
SELECT id, seq, created_at, false AS conflict FROM ins
UNION ALL
SELECT id, seq, created_at, conflict FROM prior
"""

APPEND = (
    _APPEND_HEAD
    + """
    UPDATE {s}.agent_sessions
       SET last_seq = last_seq + cardinality($2::text[]),
           updated_at = now(),
           expires_at = CASE WHEN ttl IS NULL THEN expires_at ELSE now() + ttl END
     WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM replay)
    RETURNING last_seq - cardinality($2::text[]) AS base
"""
    + _APPEND_TAIL
)

# The same, creating the session on first write (the Agents SDK adapter's case). A session
# that exists under another user is neither written nor returned ($8 is the owner).
APPEND_OR_CREATE = (
    _APPEND_HEAD
    + """
    INSERT INTO {s}.agent_sessions AS s (id, user_id, agent_name, last_seq)
    SELECT $1, $8, $9, cardinality($2::text[])
     WHERE NOT EXISTS (SELECT 1 FROM replay)
    ON CONFLICT (id) DO UPDATE
       SET last_seq = s.last_seq + excluded.last_seq,
           updated_at = now(),
           expires_at = CASE WHEN s.ttl IS NULL THEN s.expires_at ELSE now() + s.ttl END
     WHERE s.user_id = excluded.user_id
    RETURNING s.last_seq - cardinality($2::text[]) AS base
"""
    + _APPEND_TAIL
)

# Coalesced appends: many callers' batches, for any sessions, in one statement and one
# commit. $8 numbers the caller (request) of each row; a request is a replay when its first
# id is stored. Session rows are locked in id order, so two such statements never deadlock.
_MULTI_HEAD = """
WITH new AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                         $7::jsonb[], $8::int[], $9::text[], $10::text[])
        WITH ORDINALITY AS n(session_id, id, role, content, tool_calls, tool_call_id, raw, req, owner,
                             agent, ord)
), replayed AS (
    SELECT f.req FROM (SELECT DISTINCT ON (req) req, session_id, id FROM new ORDER BY req, ord) f
    CROSS JOIN LATERAL (
        SELECT 1 FROM {s}.conversation_messages x WHERE x.session_id = f.session_id AND x.id = f.id LIMIT 1
    ) hit
), prior AS (
    SELECT n.req, m.session_id, m.id, m.seq, m.created_at,
           (m.role, m.content, m.tool_calls, m.tool_call_id, m.raw)
               IS DISTINCT FROM (n.role, n.content, n.tool_calls, n.tool_call_id, n.raw) AS conflict
    FROM new n JOIN replayed r ON r.req = n.req
    CROSS JOIN LATERAL (
        SELECT * FROM {s}.conversation_messages x WHERE x.session_id = n.session_id AND x.id = n.id LIMIT 1
    ) m
), fresh AS (
    SELECT * FROM new WHERE req NOT IN (SELECT req FROM replayed)
), counts AS (
    SELECT session_id, min(owner) AS owner, min(agent) AS agent, count(*) AS n
    FROM fresh GROUP BY session_id
),
"""
_MULTI_TAIL = """
), ins AS (
    INSERT INTO {s}.conversation_messages
        (session_id, seq, id, role, content, tool_calls, tool_call_id, raw)
    SELECT f.session_id, b.base + row_number() OVER (PARTITION BY f.session_id ORDER BY f.ord),
           f.id, f.role, f.content, f.tool_calls, f.tool_call_id, f.raw
    FROM fresh f JOIN based b ON b.id = f.session_id
    RETURNING session_id, id, seq, created_at
)
SELECT session_id, id, seq, created_at, false AS conflict, false AS busy FROM ins
UNION ALL
SELECT session_id, id, seq, created_at, conflict, false FROM prior
"""

# The sessions of the batch: those that exist (in this statement's snapshot), and those whose
# rows this statement could lock. A session whose row another transaction holds is skipped
# (SKIP LOCKED) and reported `busy`, so that it stalls neither the statement nor its
# neighbours; the coalescer then sends its requests alone.
_MULTI_LOCKS = """
present AS (
    SELECT s.id, s.user_id FROM {s}.agent_sessions s WHERE s.id = ANY($1::text[])
), locked AS (
    SELECT s.id FROM {s}.agent_sessions s
    WHERE s.id = ANY($1::text[]) AND s.id IN (SELECT session_id FROM counts)
    ORDER BY s.id
    FOR UPDATE SKIP LOCKED
),
"""
_MULTI_BUSY = """
UNION ALL
SELECT c.session_id, NULL, NULL, NULL, false, true FROM counts c
WHERE c.session_id IN (SELECT id FROM present) AND c.session_id NOT IN (SELECT id FROM locked)
"""

APPEND_MANY = (
    _MULTI_HEAD
    + _MULTI_LOCKS
    + """
based AS (
    UPDATE {s}.agent_sessions s
       SET last_seq = s.last_seq + c.n,
           updated_at = now(),
           expires_at = CASE WHEN s.ttl IS NULL THEN s.expires_at ELSE now() + s.ttl END
      FROM counts c
     WHERE s.id = ANY($1::text[]) AND s.id = c.session_id AND s.id IN (SELECT id FROM locked)
    RETURNING s.id, s.last_seq - c.n AS base
"""
    + _MULTI_TAIL
    + _MULTI_BUSY
)

# The same, creating sessions on first write: absent sessions are inserted (a concurrent
# creator wins the race and the request is sent again alone); present ones are bumped only
# when the request's owner owns them.
APPEND_MANY_OR_CREATE = (
    _MULTI_HEAD
    + _MULTI_LOCKS
    + """
created AS (
    INSERT INTO {s}.agent_sessions (id, user_id, agent_name, last_seq)
    SELECT session_id, owner, agent, n FROM counts
    WHERE session_id NOT IN (SELECT id FROM present)
    ORDER BY session_id
    ON CONFLICT (id) DO NOTHING
    RETURNING id, 0::bigint AS base
), bumped AS (
    UPDATE {s}.agent_sessions s
       SET last_seq = s.last_seq + c.n,
           updated_at = now(),
           expires_at = CASE WHEN s.ttl IS NULL THEN s.expires_at ELSE now() + s.ttl END
      FROM counts c
     WHERE s.id = ANY($1::text[]) AND s.id = c.session_id AND s.id IN (SELECT id FROM locked)
       AND s.user_id = c.owner
    RETURNING s.id, s.last_seq - c.n AS base
), based AS (
    SELECT id, base FROM created UNION ALL SELECT id, base FROM bumped
"""
    + _MULTI_TAIL
    + _MULTI_BUSY
)

SESSION_OWNER = "SELECT user_id FROM {s}.agent_sessions WHERE id = $1"
SESSION_OWNERS = "SELECT id, user_id FROM {s}.agent_sessions WHERE id = ANY($1::text[])"

MESSAGES_BY_ID = f"""
SELECT {_MESSAGE_COLUMNS}, false AS conflict FROM {{s}}.conversation_messages
WHERE session_id = $1 AND id = ANY($2::text[]) ORDER BY seq
"""

CREATE_SESSION = f"""
INSERT INTO {{s}}.agent_sessions (id, user_id, agent_name, metadata, ttl, expires_at)
VALUES ($1, $2, $3, $4::jsonb, $5::interval, now() + COALESCE($6::interval, $5::interval))
RETURNING {_SESSION_COLUMNS}
"""

# One round trip: the session row joined to its messages (NULLs when it has none).
GET_SESSION = """
SELECT s.id, s.user_id, s.agent_name, s.metadata, s.created_at, s.updated_at, s.expires_at,
       m.id AS m_id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw,
       m.created_at AS m_created_at
FROM {s}.agent_sessions s
LEFT JOIN {s}.conversation_messages m ON m.session_id = s.id
WHERE s.id = $1
ORDER BY m.seq
"""

GET_ALL_MESSAGES = f"""
SELECT {_MESSAGE_COLUMNS} FROM {{s}}.conversation_messages
WHERE session_id = $1 AND seq < COALESCE($2::bigint, 9223372036854775807)
ORDER BY seq
"""

# The latest $3 messages (below seq $2), read backwards through the primary key and
# returned in chronological order.
GET_LATEST_MESSAGES = f"""
SELECT {_MESSAGE_COLUMNS} FROM (
    SELECT {_MESSAGE_COLUMNS} FROM {{s}}.conversation_messages
    WHERE session_id = $1 AND seq < COALESCE($2::bigint, 9223372036854775807)
    ORDER BY seq DESC
    LIMIT $3
) latest
ORDER BY seq
"""

# The same for a given owner ($4), in one round trip: no row means no such session; a row
# whose owner differs means the session is someone else's (and carries no messages).
GET_OWNED_MESSAGES = """
SELECT s.user_id AS owner, m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw,
       m.created_at
FROM {s}.agent_sessions s
LEFT JOIN LATERAL (
    SELECT * FROM {s}.conversation_messages x
    WHERE x.session_id = s.id AND x.seq < COALESCE($2::bigint, 9223372036854775807)
    ORDER BY x.seq DESC
    LIMIT $3
) m ON s.user_id = $4
WHERE s.id = $1
ORDER BY m.seq
"""

# Locking the newest row with LIMIT 1 FOR UPDATE: a pop that loses the race for it skips
# the row its rival deleted and takes the next one, so each message is popped once.
POP_MESSAGE = """
WITH victim AS (
    SELECT session_id, seq FROM {s}.conversation_messages
    WHERE session_id = $1 ORDER BY seq DESC LIMIT 1 FOR UPDATE
)
DELETE FROM {s}.conversation_messages m USING victim
WHERE m.session_id = $1 AND m.session_id = victim.session_id AND m.seq = victim.seq
RETURNING m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at
"""

POP_OWNED_MESSAGE = """
WITH victim AS (
    SELECT m.session_id, m.seq FROM {s}.conversation_messages m
    WHERE m.session_id = $1
      AND EXISTS (SELECT 1 FROM {s}.agent_sessions o WHERE o.id = $1 AND o.user_id = $2)
    ORDER BY m.seq DESC LIMIT 1 FOR UPDATE OF m
)
DELETE FROM {s}.conversation_messages m USING victim
WHERE m.session_id = $1 AND m.session_id = victim.session_id AND m.seq = victim.seq
RETURNING m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at
"""

CLEAR_SESSION = "DELETE FROM {s}.conversation_messages WHERE session_id = $1"
CLEAR_OWNED_SESSION = """
DELETE FROM {s}.conversation_messages
WHERE session_id = $1
  AND EXISTS (SELECT 1 FROM {s}.agent_sessions o WHERE o.id = $1 AND o.user_id = $2)
"""
SESSION_EXISTS = "SELECT EXISTS (SELECT 1 FROM {s}.agent_sessions WHERE id = $1)"
DELETE_SESSION = "DELETE FROM {s}.agent_sessions WHERE id = $1"

UPDATE_METADATA = f"""
UPDATE {{s}}.agent_sessions SET metadata = metadata || $2::jsonb, updated_at = now()
WHERE id = $1
RETURNING {_SESSION_COLUMNS}
"""

SET_EXPIRY = f"""
UPDATE {{s}}.agent_sessions
   SET ttl = $2::interval, expires_at = CASE WHEN $3 THEN NULL ELSE now() + COALESCE($4::interval, $2::interval) END
WHERE id = $1
RETURNING {_SESSION_COLUMNS}
"""

# A user's sessions, newest first, keyset-paginated by (updated_at, id) on
# idx_sessions_user_id; with up to $6 latest messages each, in the same round trip.
_USER_PAGE = """
WITH page AS (
    SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at
    FROM {s}.agent_sessions
    WHERE user_id = $1
      AND (updated_at, id) < (COALESCE($2::timestamptz, 'infinity'), COALESCE($3::text, ''))
      AND ($5::text IS NULL OR agent_name = $5)
    ORDER BY updated_at DESC, id DESC
    LIMIT $4
)
"""

USER_SESSIONS_WITH_MESSAGES = (
    _USER_PAGE
    + """
SELECT p.id, p.user_id, p.agent_name, p.metadata, p.created_at, p.updated_at, p.expires_at,
       m.id AS m_id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw,
       m.created_at AS m_created_at
FROM page p
LEFT JOIN LATERAL (
    SELECT * FROM {s}.conversation_messages x
    WHERE x.session_id = p.id
    ORDER BY x.seq DESC
    LIMIT $6
) m ON true
ORDER BY p.updated_at DESC, p.id DESC, m.seq
"""
)

USER_SESSIONS = (
    _USER_PAGE
    + """
SELECT p.*, (SELECT count(*) FROM {s}.conversation_messages x WHERE x.session_id = p.id)
       AS message_count
FROM page p
ORDER BY p.updated_at DESC, p.id DESC
"""
)

# Bounded batch deletes for retention: SKIP LOCKED leaves sessions that live writers hold
# to a later batch instead of waiting on them; each batch is its own short transaction.
# The cutoff of an idle-session cleanup is fixed once, at its start, from the server's clock:
# every batch (and a dry run's count) then agrees on what "idle" means.
IDLE_CUTOFF = "SELECT now() - $1::interval"

DELETE_IDLE_BATCH = """
WITH victims AS (
    SELECT id FROM {s}.agent_sessions
    WHERE updated_at < $1::timestamptz
      AND ($2::text IS NULL OR user_id = $2)
      AND ($3::text IS NULL OR agent_name = $3)
    ORDER BY updated_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {s}.agent_sessions s USING victims v WHERE s.id = v.id
RETURNING s.id
"""

COUNT_IDLE = """
SELECT count(*) FROM {s}.agent_sessions
WHERE updated_at < $1::timestamptz
  AND ($2::text IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR agent_name = $3)
"""

DELETE_EXPIRED_BATCH = """
WITH victims AS (
    SELECT id FROM {s}.agent_sessions
    WHERE expires_at <= now()
    ORDER BY expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {s}.agent_sessions s USING victims v WHERE s.id = v.id
RETURNING s.id
"""

DELETE_USER_BATCH = """
WITH victims AS (
    SELECT id FROM {s}.agent_sessions WHERE user_id = $1 LIMIT $2 FOR UPDATE
), gone AS (
    DELETE FROM {s}.conversation_messages m USING victims v WHERE m.session_id = v.id
    RETURNING 1
)
DELETE FROM {s}.agent_sessions s USING victims v WHERE s.id = v.id
RETURNING s.id, (SELECT count(*) FROM gone) AS messages
"""

# -- export / import (convostore.transfer) --------------------------------------------------

EXPORT_SESSIONS_PAGE = """
SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at,
       extract(epoch FROM ttl)::float8 AS ttl_seconds, last_seq
FROM {s}.agent_sessions
WHERE ($1::text IS NULL OR user_id = $1)
  AND ($2::text IS NULL OR id = $2)
  AND id > COALESCE($3::text, '')
ORDER BY id
LIMIT $4
"""

EXPORT_MESSAGES_PAGE = f"""
SELECT {_MESSAGE_COLUMNS} FROM {{s}}.conversation_messages
WHERE session_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""

# Import compares before it writes: what is stored under the file's session ids, and under
# its (session, message id) and (session, seq) keys. Rows found identical are skipped, rows
# found different are conflicts; only absent rows are inserted.
IMPORT_STORED_SESSIONS = "SELECT id, user_id, agent_name FROM {s}.agent_sessions WHERE id = ANY($1::text[])"

_STORED = "m.id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.raw, m.created_at, m.session_id"
IMPORT_STORED_MESSAGES = f"""
SELECT {_STORED} FROM unnest($1::text[], $2::text[]) AS k(session_id, id)
JOIN {{s}}.conversation_messages m ON m.session_id = k.session_id AND m.id = k.id
UNION
SELECT {_STORED} FROM unnest($1::text[], $3::bigint[]) AS k(session_id, seq)
JOIN {{s}}.conversation_messages m ON m.session_id = k.session_id AND m.seq = k.seq
"""

IMPORT_SESSIONS = """
INSERT INTO {s}.agent_sessions
    (id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl, last_seq)
SELECT id, user_id, agent_name, metadata, created_at, updated_at, expires_at,
       make_interval(secs => ttl_seconds), last_seq
FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::timestamptz[], $6::timestamptz[],
            $7::timestamptz[], $8::float8[], $9::bigint[])
    AS t(id, user_id, agent_name, metadata, created_at, updated_at, expires_at, ttl_seconds, last_seq)
"""

IMPORT_MESSAGES = """
INSERT INTO {s}.conversation_messages
    (session_id, seq, id, role, content, tool_calls, tool_call_id, raw, created_at)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                     $7::text[], $8::jsonb[], $9::timestamptz[])
"""

# Keeps the counter ahead of imported seqs, so later appends continue after them.
RAISE_LAST_SEQ = """
UPDATE {s}.agent_sessions s SET last_seq = m.max_seq
FROM (SELECT session_id, max(seq) AS max_seq FROM {s}.conversation_messages
      WHERE session_id = ANY($1::text[]) GROUP BY session_id) m
WHERE s.id = m.session_id AND s.last_seq < m.max_seq
"""

# -- stats ---------------------------------------------------------------------------------

STATS = """
SELECT (SELECT count(*) FROM {s}.agent_sessions) AS sessions,
       (SELECT count(*) FROM {s}.conversation_messages) AS messages,
       (SELECT count(DISTINCT user_id) FROM {s}.agent_sessions) AS users,
       (SELECT min(created_at) FROM {s}.agent_sessions) AS oldest_session,
       (SELECT max(updated_at) FROM {s}.agent_sessions) AS newest_activity,
       (SELECT count(*) FROM {s}.agent_sessions WHERE expires_at IS NOT NULL) AS with_expiry
"""

STATS_BY_AGENT = """
SELECT s.agent_name, count(*) AS sessions, COALESCE(sum(mc.n), 0)::bigint AS messages
FROM {s}.agent_sessions s
LEFT JOIN (SELECT session_id, count(*) AS n FROM {s}.conversation_messages GROUP BY session_id) mc
       ON mc.session_id = s.id
GROUP BY s.agent_name
ORDER BY sessions DESC, s.agent_name
"""

STATS_SIZES = """
SELECT c.relname AS name, pg_table_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind = 'r'
ORDER BY c.relname
"""


@dataclass(frozen=True, slots=True)
class Queries:
    """The statements above with the schema substituted; built once per store."""

    append: str
    append_or_create: str
    append_many: str
    append_many_or_create: str
    session_owner: str
    session_owners: str
    messages_by_id: str
    create_session: str
    get_session: str
    get_all_messages: str
    get_latest_messages: str
    get_owned_messages: str
    pop_message: str
    pop_owned_message: str
    clear_session: str
    clear_owned_session: str
    session_exists: str
    delete_session: str
    update_metadata: str
    set_expiry: str
    user_sessions_with_messages: str
    user_sessions: str
    delete_idle_batch: str
    idle_cutoff: str
    count_idle: str
    delete_expired_batch: str
    delete_user_batch: str
    export_sessions_page: str
    export_messages_page: str
    import_stored_sessions: str
    import_stored_messages: str
    import_sessions: str
    import_messages: str
    raise_last_seq: str
    stats: str
    stats_by_agent: str
    stats_sizes: str


def render(schema: str) -> Queries:
    """Return the statements for *schema* (validated and quoted here, once)."""
    quoted = quote_ident(schema)
    templates = globals()
    return Queries(**{f.name: templates[f.name.upper()].replace("{s}", quoted) for f in fields(Queries)})
