"""Versioned schema migrations, applied under a PostgreSQL advisory lock.

Each migration runs in its own transaction that first takes a transaction-level advisory
lock keyed by the schema name, then re-reads what is applied. Processes that start
together therefore queue on the lock and the later ones find nothing left to do; the lock
is released with the transaction, so this also works behind a transaction-pooling
pgbouncer. Applied versions are recorded with their name and time.

A migration's text never changes once released, and none creates a function: after the
migrations, the function registry (:func:`install_functions`, under the same lock) installs
every function whose text differs from the one it recorded as installed, so a function is
created once per change, from the one text in ``convostore/sql/``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ._failures import Failure, classify
from ._sql import FIT_TO_CITUS, FUNCTIONS, in_schema, quote_ident
from ._types import Connection
from .errors import MigrationError

logger = logging.getLogger("convostore.migrations")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change. ``sql`` uses ``{s}`` for the quoted schema."""

    version: int
    name: str
    sql: str

    def statements(self, quoted_schema: str) -> list[str]:
        """The migration's statements, one by one: Citus propagates a DDL statement on a
        distributed table to every node, which it cannot do for one of several commands
        sent in a single query string."""
        return split_statements(in_schema(self.sql, quoted_schema))


_DOLLAR_TAG = re.compile(r"\$[A-Za-z_]*\$")


def split_statements(sql: str) -> list[str]:
    """Split convostore's own migration SQL into statements: a statement ends with a ``;``
    at the end of a line outside dollar-quoted bodies (functions, DO blocks)."""
    statements: list[str] = []
    current: list[str] = []
    tag: str | None = None
    for line in sql.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        for found in _DOLLAR_TAG.findall(line):
            tag = found if tag is None else (None if found == tag else tag)
        if tag is None and line.rstrip().endswith(";"):
            statements.append("\n".join(current))
            current = []
    if "\n".join(current).strip():
        statements.append("\n".join(current))
    return statements


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """A known migration and when it was applied (``None`` while pending)."""

    version: int
    name: str
    applied_at: datetime | None


# The seed's tables and index names, plus: a per-session `last_seq` counter that assigns
# message order (no global sequence, no timestamp ties), client-chosen message ids unique
# per session (retries are recognised), a role check, and `raw` for a framework's own item.
# Session ids are text so that frameworks' own ids ("conversation_123") fit as they are.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "sessions_and_messages",
        """
CREATE TABLE IF NOT EXISTS {s}.agent_sessions (
    id varchar(255) PRIMARY KEY CHECK (id <> ''),
    user_id varchar(255) NOT NULL CHECK (user_id <> ''),
    agent_name varchar(255) NOT NULL CHECK (agent_name <> ''),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    last_seq bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS {s}.conversation_messages (
    session_id varchar(255) NOT NULL
        REFERENCES {s}.agent_sessions (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    id varchar(255) NOT NULL CHECK (id <> ''),
    role varchar(50) NOT NULL
        CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool')),
    content text NOT NULL,
    tool_calls jsonb,
    tool_call_id varchar(255),
    raw jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, seq)
);

-- A user's sessions by recency (listing, keyset pagination).
CREATE INDEX IF NOT EXISTS idx_sessions_user_id
    ON {s}.agent_sessions (user_id, updated_at DESC, id DESC);
-- Idle-session cleanup.
CREATE INDEX IF NOT EXISTS idx_sessions_updated_at ON {s}.agent_sessions (updated_at);
-- Message ids are unique per session: the idempotency key of appends.
CREATE UNIQUE INDEX IF NOT EXISTS idx_messages_session_id
    ON {s}.conversation_messages (session_id, id);
-- Time-range scans over messages; BRIN costs almost nothing on append-only rows.
CREATE INDEX IF NOT EXISTS idx_messages_created_at
    ON {s}.conversation_messages USING brin (created_at);
""",
    ),
    Migration(
        2,
        "session_expiry",
        """
ALTER TABLE {s}.agent_sessions ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE {s}.agent_sessions ADD COLUMN IF NOT EXISTS ttl interval;
CREATE INDEX IF NOT EXISTS idx_sessions_expires_at
    ON {s}.agent_sessions (expires_at) WHERE expires_at IS NOT NULL;
""",
    ),
    Migration(
        3,
        "tenants",
        """
-- Every row carries its tenant (the application), and messages their owner too, so that
-- every statement and every row-level security policy can scope by them without a join or
-- a subquery (which distributed tables cannot hold). A session id is unique per tenant.
ALTER TABLE {s}.agent_sessions ADD COLUMN IF NOT EXISTS tenant_id varchar(255) NOT NULL DEFAULT 'default';
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS tenant_id varchar(255) NOT NULL DEFAULT 'default';
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS user_id varchar(255);
UPDATE {s}.conversation_messages m SET user_id = s.user_id
  FROM {s}.agent_sessions s WHERE s.id = m.session_id AND m.user_id IS NULL;
ALTER TABLE {s}.conversation_messages ALTER COLUMN user_id SET NOT NULL;
-- No defaults: a statement that forgets the tenant fails instead of writing into 'default'.
ALTER TABLE {s}.agent_sessions ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE {s}.conversation_messages ALTER COLUMN tenant_id DROP DEFAULT;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'agent_sessions_tenant_id_check'
                   AND conrelid = '{s}.agent_sessions'::regclass) THEN
        ALTER TABLE {s}.agent_sessions ADD CONSTRAINT agent_sessions_tenant_id_check CHECK (tenant_id <> '');
    END IF;
    -- Keys: (id, tenant_id) for sessions, (session_id, tenant_id, seq) and (session_id,
    -- tenant_id, id) for messages; the foreign key follows. The session id leads: it is the
    -- selective column (and a distributed table's key); a tenant may hold millions of rows.
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'conversation_messages_session_id_fkey'
               AND conrelid = '{s}.conversation_messages'::regclass) THEN
        ALTER TABLE {s}.conversation_messages DROP CONSTRAINT conversation_messages_session_id_fkey;
        ALTER TABLE {s}.conversation_messages DROP CONSTRAINT conversation_messages_pkey;
        ALTER TABLE {s}.agent_sessions DROP CONSTRAINT agent_sessions_pkey;
        ALTER TABLE {s}.agent_sessions ADD CONSTRAINT agent_sessions_pkey PRIMARY KEY (id, tenant_id);
        ALTER TABLE {s}.conversation_messages
            ADD CONSTRAINT conversation_messages_pkey PRIMARY KEY (session_id, tenant_id, seq);
        ALTER TABLE {s}.conversation_messages ADD CONSTRAINT conversation_messages_session_fkey
            FOREIGN KEY (session_id, tenant_id) REFERENCES {s}.agent_sessions (id, tenant_id) ON DELETE CASCADE;
        DROP INDEX {s}.idx_messages_session_id;
        DROP INDEX {s}.idx_sessions_user_id;
    END IF;
    -- Times that Python's datetime could not read back are refused by the table too.
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'agent_sessions_readable_times'
                   AND conrelid = '{s}.agent_sessions'::regclass) THEN
        ALTER TABLE {s}.agent_sessions ADD CONSTRAINT agent_sessions_readable_times
            CHECK (ttl IS NULL OR ttl <= interval '36525 days') NOT VALID;
        ALTER TABLE {s}.agent_sessions ADD CONSTRAINT agent_sessions_readable_expiry
            CHECK (expires_at IS NULL OR expires_at < '9999-01-01') NOT VALID;
    END IF;
END $$;
CREATE UNIQUE INDEX IF NOT EXISTS idx_messages_session_id
    ON {s}.conversation_messages (session_id, tenant_id, id);
-- 'item': a framework's item that is no message (kept verbatim in raw).
ALTER TABLE {s}.conversation_messages DROP CONSTRAINT IF EXISTS conversation_messages_role_check;
ALTER TABLE {s}.conversation_messages ADD CONSTRAINT conversation_messages_role_check
    CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool', 'item')) NOT VALID;
-- A sliding expiry (ttl) is now derived from the last activity (updated_at + ttl) instead of
-- being rewritten by every append; expires_at keeps only fixed expiries.
UPDATE {s}.agent_sessions SET expires_at = NULL WHERE ttl IS NOT NULL AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_sessions_sliding ON {s}.agent_sessions (updated_at) WHERE ttl IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_sessions_user_id
    ON {s}.agent_sessions (tenant_id, user_id, updated_at DESC, id DESC);
-- Encryption at rest (optional): a sealed message keeps its content, tool calls and raw
-- item in `sealed` (AES-GCM), with the id of the master key that sealed it.
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS key_id varchar(64);
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS sealed bytea;
""",
    ),
    # Migrations 4, 6, 8, 9, 10 and 12 created functions, which the function registry
    # installs since (see install_functions); their texts here no longer do.
    Migration(
        4,
        "append_and_read_functions",
        """
-- Created convostore_append and convostore_read; the function registry installs them since.
""",
    ),
    Migration(
        5,
        "row_level_security_and_audit",
        """
-- Row-level security: a role that neither owns the tables nor bypasses RLS sees and
-- changes only the rows of the scope its transaction set (SET LOCAL convostore.tenant_id and
-- convostore.user_id; '*' for every user of the tenant). Nothing set: nothing visible. The
-- policies hold no subquery: tenant and owner are on every row.
ALTER TABLE {s}.agent_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE {s}.conversation_messages ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_scope ON {s}.agent_sessions;
CREATE POLICY convostore_scope ON {s}.agent_sessions
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*'
                OR user_id = current_setting('convostore.user_id', true)));
DROP POLICY IF EXISTS convostore_scope ON {s}.conversation_messages;
CREATE POLICY convostore_scope ON {s}.conversation_messages
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*'
                OR user_id = current_setting('convostore.user_id', true)));

-- The audit trail: deletions, erasures, exports and imports, written in the same statement
-- or transaction as what they record. The runtime role may only insert into it.
CREATE TABLE IF NOT EXISTS {s}.convostore_audit (
    at timestamptz NOT NULL DEFAULT now(),
    db_role text NOT NULL DEFAULT current_user,
    actor text,
    action text NOT NULL,
    tenant_id varchar(255),
    user_id varchar(255),
    session_id varchar(255),
    rows bigint NOT NULL DEFAULT 0,
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS idx_audit_at ON {s}.convostore_audit USING brin (at);
""",
    ),
    Migration(
        6,
        "branches_compaction_usage",
        """
-- Branches share their parent's rows up to the fork: a message belongs to one branch of its
-- session and seq stays the session's one counter. A compaction summary records the range
-- of seqs it stands for, which stay stored (hidden from the compacted view). tokens: the
-- message's token count, kept for budget windows (in clear, like the role, when sealed).
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS branch varchar(255) NOT NULL DEFAULT 'main';
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS tokens integer;
-- The item's type (a framework's: 'reasoning', 'function_call', ...), kept in clear so that
-- a window never starts between a reasoning item and the item it precedes.
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS kind varchar(64);
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS covers_from bigint;
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS covers_to bigint;
ALTER TABLE {s}.conversation_messages DROP CONSTRAINT IF EXISTS conversation_messages_covers_check;
ALTER TABLE {s}.conversation_messages ADD CONSTRAINT conversation_messages_covers_check
    CHECK ((covers_from IS NULL) = (covers_to IS NULL) AND covers_from <= covers_to AND covers_to <= seq
           AND tokens >= 0);
-- Set once a session is forked or compacted: reads of the others keep their plain path.
ALTER TABLE {s}.agent_sessions ADD COLUMN IF NOT EXISTS forked boolean NOT NULL DEFAULT false;
ALTER TABLE {s}.agent_sessions ADD COLUMN IF NOT EXISTS compacted boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS idx_messages_covers
    ON {s}.conversation_messages (session_id, tenant_id, seq) WHERE covers_from IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_messages_pinned
    ON {s}.conversation_messages (session_id, tenant_id, seq) WHERE role IN ('system', 'developer');

-- A session's branches other than 'main' (which has a row only once cleared or deleted). A
-- deleted branch keeps its row, and the rows its live descendants share, until none needs them.
CREATE TABLE IF NOT EXISTS {s}.conversation_branches (
    session_id varchar(255) NOT NULL,
    tenant_id varchar(255) NOT NULL,
    name varchar(255) NOT NULL CHECK (name <> ''),
    user_id varchar(255) NOT NULL,
    parent varchar(255),
    fork_seq bigint CHECK (fork_seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    cleared_to bigint,
    PRIMARY KEY (session_id, tenant_id, name),
    CONSTRAINT conversation_branches_session_fkey FOREIGN KEY (session_id, tenant_id)
        REFERENCES {s}.agent_sessions (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT conversation_branches_parent_check
        CHECK ((parent IS NULL) = (name = 'main') AND (parent IS NULL) = (fork_seq IS NULL))
);

-- Per-turn usage of the model, with the session's owner and agent for totals.
CREATE TABLE IF NOT EXISTS {s}.conversation_usage (
    session_id varchar(255) NOT NULL,
    tenant_id varchar(255) NOT NULL,
    id varchar(255) NOT NULL CHECK (id <> ''),
    user_id varchar(255) NOT NULL,
    agent_name varchar(255) NOT NULL,
    branch varchar(255) NOT NULL DEFAULT 'main',
    model varchar(255),
    requests integer NOT NULL DEFAULT 0 CHECK (requests >= 0),
    input_tokens bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    reasoning_tokens bigint NOT NULL DEFAULT 0 CHECK (reasoning_tokens >= 0),
    cached_tokens bigint NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0),
    duration_seconds double precision CHECK (duration_seconds >= 0 AND duration_seconds < 1e9),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, tenant_id, id),
    CONSTRAINT conversation_usage_session_fkey FOREIGN KEY (session_id, tenant_id)
        REFERENCES {s}.agent_sessions (id, tenant_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS idx_usage_user ON {s}.conversation_usage (tenant_id, user_id, created_at);
CREATE INDEX IF NOT EXISTS idx_usage_created_at ON {s}.conversation_usage USING brin (created_at);

ALTER TABLE {s}.conversation_branches ENABLE ROW LEVEL SECURITY;
ALTER TABLE {s}.conversation_usage ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_scope ON {s}.conversation_branches;
CREATE POLICY convostore_scope ON {s}.conversation_branches
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*'
                OR user_id = current_setting('convostore.user_id', true)));
DROP POLICY IF EXISTS convostore_scope ON {s}.conversation_usage;
CREATE POLICY convostore_scope ON {s}.conversation_usage
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*'
                OR user_id = current_setting('convostore.user_id', true)));

-- The functions take branches, windows and token counts now (earlier signatures dropped).
DROP FUNCTION IF EXISTS {s}.convostore_append(text, text, text, boolean, boolean, int[], text[], text[], text[],
    text[], text[], text[], text[], text[], text[], text[], bytea[]);
DROP FUNCTION IF EXISTS {s}.convostore_read(text, text, text, bigint, bigint);
-- (And created convostore_append, convostore_read and convostore_compact, which the function
-- registry installs since.)
""",
    ),
    Migration(
        7,
        "search_listing_state_and_api_keys",
        """
-- Full-text search over what messages say: English stemming, the first 100,000 characters
-- (a tsvector has a size limit), never a sealed message (its content is a digest).
ALTER TABLE {s}.conversation_messages ADD COLUMN IF NOT EXISTS search tsvector
    GENERATED ALWAYS AS (CASE WHEN sealed IS NULL THEN to_tsvector('english', left(content, 100000)) END) STORED;
CREATE INDEX IF NOT EXISTS idx_messages_search ON {s}.conversation_messages USING gin (search);

-- A tenant's sessions by recency (listing every user's, as a browser does).
CREATE INDEX IF NOT EXISTS idx_sessions_recent ON {s}.agent_sessions (tenant_id, updated_at DESC, id DESC);

-- State kept beside conversations, per agent (an app's, user_id '') or per agent and user:
-- what frameworks call app and user state (Google ADK's 'app:' and 'user:' keys).
CREATE TABLE IF NOT EXISTS {s}.convostore_state (
    tenant_id varchar(255) NOT NULL,
    agent_name varchar(255) NOT NULL CHECK (agent_name <> ''),
    user_id varchar(255) NOT NULL DEFAULT '',
    state jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(state) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, agent_name, user_id)
);
ALTER TABLE {s}.convostore_state ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_scope ON {s}.convostore_state;
CREATE POLICY convostore_scope ON {s}.convostore_state
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*' OR user_id = ''
                OR user_id = current_setting('convostore.user_id', true)));

-- API keys of `convostore serve`: the secret is never stored, only its SHA-256 (the secret
-- is 256 random bits). A key acts in one tenant, for one user or every user of it, or (no
-- tenant) as an operator across tenants.
CREATE TABLE IF NOT EXISTS {s}.convostore_api_keys (
    id varchar(32) PRIMARY KEY,
    secret_hash bytea NOT NULL,
    name text NOT NULL DEFAULT '',
    tenant_id varchar(255),
    user_id varchar(255),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT convostore_api_keys_scope_check CHECK (user_id IS NULL OR tenant_id IS NOT NULL)
);
""",
    ),
    Migration(
        8,
        "lone_append_path",
        """
-- Created convostore_append again (its path for one request); the function registry installs
-- it since.
""",
    ),
    Migration(
        9,
        "window_start_reads",
        """
-- Created convostore_read again (how a window's start is found); the function registry
-- installs it since.
""",
    ),
    Migration(
        10,
        "window_pinned_shapes",
        """
-- Created convostore_read again (its window statements in two shapes); the function registry
-- installs it since.
""",
    ),
    Migration(
        11,
        "citus_custom_plans",
        """
-- Fitted the functions of a schema distributed before it to Citus (sql/fit_to_citus.sql),
-- which runs since whenever the function registry installs a function, and after
-- distributing.
""",
    ),
    Migration(
        12,
        "shard_appends",
        """
-- Created convostore_append_sharded and convostore_hold_shards; the function registry installs
-- them since.
""",
    ),
    Migration(
        13,
        "search_index_opt_in",
        """
-- Full-text search is opt-in: the generated column and its GIN index made every append pay
-- for indexing what it wrote, whether or not the store ever searched. Search now reads an
-- expression that `convostore search-index create` indexes (_sql.SEARCH_INDEX_CREATE).
DROP INDEX IF EXISTS {s}.idx_messages_search;
ALTER TABLE {s}.conversation_messages DROP COLUMN IF EXISTS search;
""",
    ),
    Migration(
        14,
        "function_registry",
        """
-- The function registry: each function convostore installed in the schema, with the SHA-256
-- of the text it ran (CREATE OR REPLACE FUNCTION, the schema substituted). After migrating,
-- every function whose text differs from the one recorded is installed again.
CREATE TABLE IF NOT EXISTS {s}.convostore_functions (
    name text PRIMARY KEY,
    hash text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
-- Roles that read the ledger (a runtime role set up before this migration) read the registry
-- too: a store checks both before its first call.
DO $$
DECLARE
    reader text;
BEGIN
    FOR reader IN
        SELECT DISTINCT a.grantee::regrole::text
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = '{s}.convostore_migrations'::regclass AND a.privilege_type = 'SELECT'
          AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE format('GRANT SELECT ON {s}.convostore_functions TO %s', reader);
    END LOOP;
END
$$;
""",
    ),
    Migration(
        15,
        "key_expiry_and_audit_role",
        """
-- Who wrote an audit row is the database's word, not the application's: db_role is the
-- session's login role (SET ROLE cannot change it, only a superuser can), and the roles the
-- owner let insert (the runtime role) may name only the application's columns, never db_role
-- or at. Roles set up before this migration had INSERT on every column: narrowed here.
ALTER TABLE {s}.convostore_audit ALTER COLUMN db_role SET DEFAULT session_user;

-- API keys may expire; a browser's sign-ins of a key end when one of them signs out (the
-- sign-in token carries the count it was issued under).
ALTER TABLE {s}.convostore_api_keys ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE {s}.convostore_api_keys ADD COLUMN IF NOT EXISTS sign_outs integer NOT NULL DEFAULT 0;

DO $$
DECLARE
    grantee_role text;
BEGIN
    FOR grantee_role IN
        SELECT DISTINCT a.grantee::regrole::text
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = '{s}.convostore_audit'::regclass AND a.privilege_type = 'INSERT'
          AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE format('REVOKE INSERT ON {s}.convostore_audit FROM %s', grantee_role);
        EXECUTE format('GRANT INSERT (%s) ON {s}.convostore_audit TO %s',
                       'actor, action, tenant_id, user_id, session_id, rows, details', grantee_role);
        EXECUTE format('GRANT UPDATE (sign_outs) ON {s}.convostore_api_keys TO %s', grantee_role);
    END LOOP;
END
$$;
""",
    ),
    Migration(
        16,
        "tenant_bound_roles",
        """
-- Runtime roles bound to one tenant (and optionally one user) by `convostore roles create
-- --bind`. What binds them are restrictive policies naming the role, with the tenant as a
-- constant (convostore.roles): nothing the role can set or call widens them. This table
-- only says which roles are bound, so that a store on such a role refuses at once a call
-- for another tenant instead of finding nothing; the roles read it and cannot write it.
CREATE TABLE IF NOT EXISTS {s}.convostore_bound_roles (
    role_name name PRIMARY KEY,
    tenant_id varchar(255) NOT NULL,
    user_id varchar(255),
    bound_at timestamptz NOT NULL DEFAULT now()
);
-- Each role reads its own binding, and no other role's.
ALTER TABLE {s}.convostore_bound_roles ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_own ON {s}.convostore_bound_roles;
CREATE POLICY convostore_own ON {s}.convostore_bound_roles FOR SELECT USING (role_name = current_user);
GRANT SELECT ON {s}.convostore_bound_roles TO PUBLIC;
-- The audit trail and the API keys carry tenants too: row-level security on them, open to
-- every role (a permissive policy that holds for every row), so that a bound role's
-- restrictive policies can narrow them.
ALTER TABLE {s}.convostore_audit ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_open ON {s}.convostore_audit;
CREATE POLICY convostore_open ON {s}.convostore_audit USING (true) WITH CHECK (true);
ALTER TABLE {s}.convostore_api_keys ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_open ON {s}.convostore_api_keys;
CREATE POLICY convostore_open ON {s}.convostore_api_keys USING (true) WITH CHECK (true);
""",
    ),
)

_LEDGER = """
CREATE TABLE IF NOT EXISTS {s}.convostore_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def _lock_key(schema: str) -> str:
    return f"convostore.migrations.{schema}"


async def _applied(conn: Connection, quoted: str) -> dict[int, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{quoted}.convostore_migrations")
    if not exists:
        return {}
    rows = await conn.fetch(f"SELECT version, name, applied_at FROM {quoted}.convostore_migrations ORDER BY version")
    return {r["version"]: r for r in rows}


def _check_known(applied: dict[int, asyncpg.Record]) -> None:
    known = {m.version: m.name for m in MIGRATIONS}
    for version, row in applied.items():
        if version not in known:
            raise MigrationError(
                f"the schema has migration {version} ({row['name']}), which this convostore does not "
                f"know; it knows up to {max(known)}: upgrade convostore"
            )
        if known[version] != row["name"]:
            raise MigrationError(
                f"migration {version} is recorded as {row['name']!r} but this convostore calls it {known[version]!r}"
            )


async def apply_migrations(conn: Connection, schema: str) -> list[Migration]:
    """Apply every pending migration to *schema*; return those this call applied."""
    quoted = quote_ident(schema)
    done: list[Migration] = []
    try:
        applied = await _applied(conn, quoted)
        _check_known(applied)
        if all(m.version in applied for m in MIGRATIONS) and not _changed(
            await _installed(conn, quoted), _rendered(quoted)
        ):
            return done
        for migration in MIGRATIONS:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _lock_key(schema))
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
                await conn.execute(in_schema(_LEDGER, quoted))
                applied = await _applied(conn, quoted)
                _check_known(applied)
                if migration.version in applied:
                    continue
                for statement in migration.statements(quoted):
                    await conn.execute(statement)
                await conn.execute(
                    f"INSERT INTO {quoted}.convostore_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            logger.info("applied migration %04d_%s to schema %s", migration.version, migration.name, schema)
            done.append(migration)
        await _install_functions(conn, schema, quoted)
    except asyncpg.PostgresError as exc:
        if classify(exc, conn) is not Failure.STATEMENT:
            # The connection or the server failed, not the migration: the runner retries it
            # (a migration is skipped once recorded) or reports the timeout.
            raise
        raise MigrationError(f"migrating schema {schema!r} failed: {exc}") from exc
    return done


def _rendered(quoted: str) -> dict[str, str]:
    return {name: in_schema(text, quoted) for name, text in FUNCTIONS.items()}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _installed(conn: Connection, quoted: str) -> dict[str, str]:
    """The registry: each function installed and the digest of the text it ran."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{quoted}.convostore_functions"):
        return {}
    rows = await conn.fetch(f"SELECT name, hash FROM {quoted}.convostore_functions")
    return {r["name"]: r["hash"] for r in rows}


def _changed(installed: dict[str, str], rendered: dict[str, str]) -> list[str]:
    return [name for name, text in rendered.items() if installed.get(name) != _digest(text)]


async def _install_functions(conn: Connection, schema: str, quoted: str) -> list[str]:
    rendered = _rendered(quoted)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _lock_key(schema))
        # Read under the lock: a process that held it before may have installed them.
        changed = _changed(await _installed(conn, quoted), rendered)
        for name in changed:
            await conn.execute(rendered[name])
            await conn.execute(
                f"INSERT INTO {quoted}.convostore_functions AS f (name, hash) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, installed_at = now()",
                name,
                _digest(rendered[name]),
            )
        if changed:
            await _fit_to_citus(conn, quoted)  # CREATE OR REPLACE reset the functions' settings
    if changed:
        logger.info("installed functions %s in schema %s", ", ".join(changed), schema)
    return changed


async def install_functions(conn: Connection, schema: str) -> list[str]:
    """Install (``CREATE OR REPLACE``) every function of a migrated *schema* whose text differs
    from the one the function registry recorded, under the migrations' lock and in one
    transaction, then fit them to Citus if the tables are distributed; return the names of
    those installed. :func:`apply_migrations` calls it after the migrations."""
    quoted = quote_ident(schema)
    try:
        return await _install_functions(conn, schema, quoted)
    except asyncpg.PostgresError as exc:
        if classify(exc, conn) is not Failure.STATEMENT:
            raise
        raise MigrationError(f"installing the functions of schema {schema!r} failed: {exc}") from exc


async def migration_status(conn: Connection, schema: str) -> list[MigrationStatus]:
    """Every known migration with its ``applied_at`` (``None`` if pending)."""
    applied = await _applied(conn, quote_ident(schema))
    _check_known(applied)
    return [
        MigrationStatus(m.version, m.name, applied[m.version]["applied_at"] if m.version in applied else None)
        for m in MIGRATIONS
    ]


# -- scale-out ----------------------------------------------------------------------------------

BOUND_ROLES_ON_CITUS = (
    "they rest on restrictive row-level security policies, which Citus (13.2) copies to the shards "
    "as permissive ones, widening them instead: tenant-bound roles are not offered on distributed tables"
)

_DISTRIBUTED_FUNCTIONS = {
    "convostore_append": "p_route",
    "convostore_append_sharded": "p_route",
    "convostore_read": "p_session",
    "convostore_compact": "p_session",
}
# Tables distributed by session id, co-located with the sessions (their key's first column).
_SESSION_TABLES = ("conversation_messages", "conversation_branches", "conversation_usage")


@dataclass(frozen=True, slots=True)
class Distribution:
    """What :func:`distribute` did this time: the tables and functions it distributed."""

    tables: tuple[str, ...]
    functions: tuple[str, ...]


async def distribute(conn: Connection, schema: str) -> Distribution:
    """Distribute a migrated schema over a Citus cluster (run on its coordinator).

    ``agent_sessions`` is distributed by ``id`` and the tables of messages, branches and usage
    by ``session_id``, co-located, so that a session and its messages live on one node (Citus
    moves the rows already there); ``convostore_append`` (and ``convostore_append_sharded``,
    which appends call on distributed tables), ``convostore_read`` and ``convostore_compact``
    are distributed by their session argument, so that an append, a history read or a
    compaction is delegated whole to that node. The migration ledger, the
    audit trail and the API keys stay on the coordinator. Idempotent, and safe from several
    processes at once (they queue on the migrations' lock): what is already distributed is
    left as it is.
    """
    quoted = quote_ident(schema)
    sessions = f"{quoted}.agent_sessions"
    bindings = f"{quoted}.convostore_bound_roles"
    if await conn.fetchval("SELECT to_regclass($1)", bindings) and await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {bindings})"
    ):
        raise MigrationError(f"schema {schema!r} has tenant-bound roles: {BOUND_ROLES_ON_CITUS}")
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"):
        raise MigrationError("the database has no citus extension: distributing needs a Citus coordinator")
    if await conn.fetchval("SELECT to_regclass($1)", sessions) is None:
        raise MigrationError(f"schema {schema!r} is not migrated: migrate it first")
    distributed = "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)"
    tables: list[str] = []
    functions: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _lock_key(schema))
            # Distributing functions in the same transaction as tables needs one connection per node.
            await conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
            if not await conn.fetchval(distributed, sessions):
                await conn.execute("SELECT create_distributed_table($1, 'id')", sessions)
                tables.append("agent_sessions")
            for table in _SESSION_TABLES:
                if not await conn.fetchval(distributed, f"{quoted}.{table}"):
                    await conn.execute(
                        "SELECT create_distributed_table($1, 'session_id', colocate_with => $2)",
                        f"{quoted}.{table}",
                        sessions,
                    )
                    tables.append(table)
            for name, argument in _DISTRIBUTED_FUNCTIONS.items():
                function = await conn.fetchval("SELECT $1::regproc::regprocedure::text", f"{quoted}.{name}")
                done = await conn.fetchval(
                    "SELECT distribution_argument_index IS NOT NULL FROM pg_dist_object "
                    "WHERE classid = 'pg_proc'::regclass AND objid = $1::regprocedure",
                    function,
                )
                if not done:
                    await conn.execute(
                        "SELECT create_distributed_function($1, $2, colocate_with => $3)", function, argument, sessions
                    )
                    functions.append(name)
            await _fit_to_citus(conn, quoted)
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"distributing schema {schema!r} failed: {exc}") from exc
    if tables or functions:
        logger.info("distributed schema %s: tables %s, functions %s", schema, tables, functions)
    return Distribution(tuple(tables), tuple(functions))


async def _fit_to_citus(conn: Connection, quoted: str) -> None:
    """On distributed tables, the delegated functions plan each statement with the call's
    values (see ``_sql.FIT_TO_CITUS``); a schema that is not distributed is left as it is.
    Idempotent."""
    await conn.execute(in_schema(FIT_TO_CITUS, quoted))
