"""``PostgresSessionStore``: sessions and their messages in PostgreSQL.

The store is the API; statements run through a :class:`~convostore._runner.Runner`, which
owns the pools (one per event loop), the attempts within each call's deadline and the error
classification. The store is usable at once: the first call in an event loop opens that
loop's pool (and, the first time, migrates or checks the schema).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

import asyncpg

from . import _branches
from . import _validate as check
from ._appends import Appender, AppendRequest, Outcome
from ._coalesce import AppendWriter
from ._codec import load_json
from ._crypto import Keyring, SealedTenants, parse_keys, same_message
from ._failures import redact
from ._retention import Sweeper
from ._rows import Opener, messages_from_rows, no_key, session_from_row, sessions_from_joined_rows
from ._runner import PoolOptions, Runner, settle_despite_cancel
from ._sql import HAS_CITUS, IS_DISTRIBUTED, MARKER_KIND, Queries, quote_ident, render
from ._types import Connection
from ._validate import Row
from .errors import (
    ConfigurationError,
    DuplicateMessageId,
    InvalidIdentifier,
    InvalidInput,
    InvalidMessage,
    InvalidMetadata,
    SchemaNotReady,
    SessionExists,
    SessionNotFound,
    SessionOwnershipError,
    StoreClosed,
)
from .migrations import Distribution, Migration, MigrationStatus, apply_migrations, distribute, migration_status
from .models import (
    HIT_END,
    HIT_START,
    AgentStats,
    Branch,
    Message,
    NewMessage,
    SearchHit,
    Session,
    SessionCursor,
    StoreStats,
    TableSize,
    TurnUsage,
    UsageTotal,
    new_message,
)
from .retry import RetryPolicy
from .windows import TokenCounter, Window, fit

logger = logging.getLogger("convostore")

T = TypeVar("T")

__all__ = ["ErasureReport", "PostgresSessionStore", "redact"]

# What stands for messages a compaction replaced with nothing (it hides itself too).
EMPTY_SUMMARY = NewMessage("item", "", raw={"type": MARKER_KIND})


# Whether the connected role is restricted by row-level security on the tables: not a
# superuser, not BYPASSRLS, and not (a member of) their owner.
_ROW_SECURITY = """
SELECT NOT (r.rolsuper OR r.rolbypassrls OR pg_has_role(current_user, c.relowner, 'USAGE'))
FROM pg_roles r, pg_class c WHERE r.rolname = current_user AND c.oid = to_regclass($1)
"""


async def _fetch(sql: str, args: tuple[Any, ...], conn: Connection) -> list[Any]:
    return await conn.fetch(sql, *args)


async def _execute(sql: str, args: tuple[Any, ...], conn: Connection) -> str:
    return await conn.execute(sql, *args)


async def _nothing(conn: Connection) -> None:
    """A call that only needs a connection (``connect()``: the pool opens and migrates)."""


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What :meth:`PostgresSessionStore.delete_user` removed."""

    user_id: str
    sessions: int
    messages: int


class PostgresSessionStore:
    """Agent sessions and their messages in PostgreSQL.

    Construction does no I/O, and no ``connect()`` is needed: the first call made in an event
    loop opens a pool for that loop (a store shared by several threads or by repeated
    ``asyncio.run`` calls gets one pool per loop) and, the first time, applies pending
    migrations. ``connect()`` does that eagerly; ``close()`` (or leaving ``async with``) closes
    every pool. The URL is *database_url*, else ``$DATABASE_URL``, else an embedded
    PostgreSQL started on demand (see :mod:`convostore.embedded`).

    Every method is one round trip unless its docstring says otherwise, raises only
    :class:`~convostore.errors.ConvostoreError` subclasses, and retries failures of the
    connection or server within the *retry* policy's deadline (writes are idempotent, so a
    retry never stores twice). A write whose caller is cancelled completes (or fails) before
    the cancellation reaches the caller.

    Options (durations are float seconds):

    * ``schema``: where the tables live (default ``$CONVOSTORE_SCHEMA`` or ``public``).
    * ``tenant``: the application whose sessions this store reads and writes (default
      ``$CONVOSTORE_TENANT`` or ``"default"``); :meth:`scoped` gives views of other tenants
      or of one user. Session ids are unique per tenant.
    * ``actor``: who the audit trail records for deletions, erasures, exports and imports
      made through this store (default ``$CONVOSTORE_ACTOR``), beside the database role.
    * ``min_size`` / ``max_size``: bounds of each event loop's pool.
    * ``command_timeout``: per-statement limit; ``acquire_timeout``: wait for a pooled
      connection; ``connect_timeout``: opening a connection. Each is further bounded by what
      is left of the call's deadline.
    * ``pgbouncer=True``: no server-side prepared statement cache (transaction pooling).
    * ``route_to_nodes``: on distributed tables, send appends and history reads straight to
      the Citus node holding the session, through a pool per node (same credentials, the host
      and port the cluster's metadata names), instead of through the coordinator (default
      ``$CONVOSTORE_ROUTE_TO_NODES``); see :mod:`convostore._routing`.
    * ``apply_migrations``: migrate on first use (default); ``False`` instead checks that the
      schema exists and is up to date, raising :class:`~convostore.errors.SchemaNotReady`;
      ``None`` does neither (for tools that manage the schema, like ``convostore migrate``).
    * ``coalesce_appends``: concurrent appends share statements and commits (see
      :mod:`convostore._coalesce`); a lone append is sent at once either way.
    * ``encryption_keys``: base64 master keys (default ``$CONVOSTORE_ENCRYPTION_KEYS``,
      comma-separated); with them, what messages say is sealed at rest with the first key
      (AES-GCM, a key per tenant) and rows sealed by any of them open. See :mod:`convostore._crypto`
      for what stays plaintext, and :meth:`rekey` for rotation.
    * ``distribute``: on a Citus coordinator, distribute the tables when migrating (default
      ``$CONVOSTORE_DISTRIBUTE``); see :meth:`distribute`. Whether the tables are
      distributed is found out when a pool opens, and the few statements whose shape must
      differ there are chosen then.
    * ``token_counter``: counts a message's tokens when it is written, for token-budget
      windows (default: about four characters a token; see
      :func:`~convostore.windows.tiktoken_counter`).
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str | None = None,
        tenant: str | None = None,
        actor: str | None = None,
        apply_migrations: bool | None = True,
        distribute: bool | None = None,
        encryption_keys: Sequence[str] | None = None,
        token_counter: TokenCounter | None = None,
        command_timeout: float | None = 30.0,
        acquire_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        pgbouncer: bool = False,
        route_to_nodes: bool | None = None,
        coalesce_appends: bool = True,
        max_inactive_connection_lifetime: float = 300.0,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self._schema = schema or os.environ.get("CONVOSTORE_SCHEMA") or "public"
        # Both shapes of the statements, validating the schema name now; the one in use is
        # chosen once a pool opens and finds out whether the tables are distributed.
        self._shapes = (render(self._schema), render(self._schema, distributed=True))
        if distribute is None:
            distribute = os.environ.get("CONVOSTORE_DISTRIBUTE", "").lower() in ("1", "true", "yes")
        self._distribute = distribute
        self._keyring = (
            Keyring([k for key in encryption_keys for k in parse_keys(key)]) if encryption_keys else Keyring.from_env()
        )
        if token_counter is not None and not callable(token_counter):
            raise ConfigurationError("token_counter must be a callable taking a str and returning an int")
        self._count_tokens = token_counter
        self._tenant = check.scope_name(tenant or os.environ.get("CONVOSTORE_TENANT") or "default", "tenant")
        self._user: str | None = None  # the user a scoped view acts for (None: every user)
        self._opener = self.opener_for(self._tenant)  # opens this tenant's sealed rows
        self._actor = check.optional_identifier(actor or os.environ.get("CONVOSTORE_ACTOR"), "actor")
        self._apply_migrations = apply_migrations
        options = PoolOptions(
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            acquire_timeout=acquire_timeout,
            connect_timeout=connect_timeout,
            max_inactive_connection_lifetime=max_inactive_connection_lifetime,
            pgbouncer=pgbouncer,
            route_to_nodes=(
                os.environ.get("CONVOSTORE_ROUTE_TO_NODES", "").lower() in ("1", "true", "yes")
                if route_to_nodes is None
                else route_to_nodes
            ),
            connect_kwargs=dict(connect_kwargs or {}),
        )
        self._runner = Runner(database_url, options, retry or RetryPolicy.from_env(), prepare=self._prepare)
        self._appender = Appender(self._runner, self._shapes[0])
        self._coalesce = coalesce_appends
        self._sweeper: Sweeper | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the tables."""
        return self._schema

    @property
    def tenant(self) -> str:
        """The tenant (application) this store's calls act in (``$CONVOSTORE_TENANT`` or ``"default"``)."""
        return self._tenant

    @property
    def user(self) -> str | None:
        """The user a scoped view acts for (``None``: every user of the tenant)."""
        return self._user

    def scoped(self, *, tenant: str | None = None, user: str | None = None) -> PostgresSessionStore:
        """A view of this store acting in *tenant* (default: this store's) for *user*.

        The view shares this store's connections (closing either closes both). With *user*,
        every call of the view acts for that user alone: ``user_id`` arguments default to it,
        another user's id is refused, and a session of another user raises
        :class:`~convostore.errors.SessionOwnershipError` (or, under row-level security,
        is not seen at all). A user view cannot be widened again.
        """
        new_tenant = check.scope_name(tenant, "tenant") if tenant is not None else self._tenant
        new_user = None if user is None else check.scope_name(user, "user")
        if self._user is not None and (new_user != self._user or new_tenant != self._tenant):
            raise SessionOwnershipError(f"this view acts for user {self._user!r} of tenant {self._tenant!r} only")
        view = copy.copy(self)
        view._tenant, view._user, view._sweeper = new_tenant, new_user, None
        view._opener = view.opener_for(new_tenant)
        return view

    def acting_user(self, user_id: object = None) -> str | None:
        """The user a call acts for: *user_id*, or the view's user; another user is refused."""
        uid = None if user_id is None else check.scope_name(user_id, "user_id")
        if self._user is None:
            return uid
        if uid is not None and uid != self._user:
            raise SessionOwnershipError(f"this view acts for user {self._user!r}, not {uid!r}")
        return self._user

    @property
    def encrypted(self) -> bool:
        """Whether this store seals what messages say (it has encryption keys)."""
        return self._keyring is not None

    def opener_for(self, tenant: str) -> Opener:
        """What opens the sealed rows of *tenant* (for convostore's own modules: export)."""
        return no_key if self._keyring is None else self._keyring.opener(tenant)

    def seal_row(self, session_id: str, row: tuple[Any, ...], branch: str = "main") -> tuple[Any, ...]:
        """A validated message row (``_validate.Row``) of this tenant and *branch*, its content
        sealed when the store has encryption keys (for convostore's own modules: import)."""
        return row if self._keyring is None else self._keyring.seal_row(self._tenant, session_id, row, branch)

    async def sealed_rows(self, session_id: str, rows: list[Any], branch: str) -> list[Any]:
        """Validated rows of *branch* as they are written: sealed when the store has keys (the
        tenant marked sealed first, once per event loop); without keys, refused with
        :class:`~convostore.errors.EncryptionRequired` in a tenant marked sealed."""
        tenants = self._runner.loop_local("sealed_tenants", SealedTenants)
        q, scope = self.queries, self.scope()
        if self._keyring is None:
            await tenants.refuse_plaintext(self._runner, q.get_state, self._tenant, scope)
            return rows
        await tenants.mark(self._runner, q.get_state, q.update_state, self._tenant, scope)
        return [self.seal_row(session_id, row, branch) for row in rows]

    def scope(self, all_tenants: bool = False) -> tuple[str, str] | None:
        """The row-level security scope of a call; ``None`` for an operator's call across
        tenants, which a role subject to row-level security cannot make."""
        if not all_tenants:
            return (self._tenant, self._user or "*")
        if self._user is not None:
            raise SessionOwnershipError(f"this view acts for user {self._user!r}; it cannot act across tenants")
        if self._runner.row_security:
            raise ConfigurationError("calls across tenants need a role that row-level security does not restrict")
        return None

    @property
    def database_url(self) -> str | None:
        """The URL in use once resolved (``None`` before first use if none was given)."""
        return self._runner.url

    @property
    def runner(self) -> Runner:
        """Where this store's statements run (for convostore's own modules: transfer, adapters)."""
        return self._runner

    @property
    def queries(self) -> Queries:
        """This store's SQL, rendered for its schema and shape (for convostore's own modules)."""
        return self._shapes[self._runner.distributed]

    @property
    def _q(self) -> Queries:
        return self._shapes[self._runner.distributed]

    @property
    def pool(self) -> asyncpg.Pool:
        """The current event loop's asyncpg pool (raises :class:`StoreClosed` when it is not open)."""
        pool = self._runner.current_pool()
        if pool is None:
            raise StoreClosed("no pool is open in this event loop: call connect() or use 'async with'")
        return pool

    async def connect(self) -> Self:
        """Open this event loop's pool now (starting the embedded server if no URL is
        configured) and migrate, instead of on first use. Safe to call concurrently."""
        self._runner.reopen()
        await self._runner.run("connect", _nothing)
        return self

    async def _prepare(self, conn: Connection) -> None:
        """Run once per new pool, before any call uses it: migrate, or check the schema; then
        find out whether this role is subject to row-level security."""
        await self._check_schema(conn)
        sessions = f"{quote_ident(self._schema)}.agent_sessions"
        if self._distribute and self._apply_migrations:
            await distribute(conn, self._schema)
        citus = await conn.fetchval(HAS_CITUS)
        self._runner.distributed = bool(citus and await conn.fetchval(IS_DISTRIBUTED, sessions))
        self._runner.route_table = sessions if self._runner.distributed else None
        self._runner.row_security = bool(await conn.fetchval(_ROW_SECURITY, sessions))

    async def _check_schema(self, conn: Connection) -> None:
        if self._apply_migrations:
            await apply_migrations(conn, self._schema)
        elif self._apply_migrations is False:
            status = await migration_status(conn, self._schema)
            pending = [m for m in status if m.applied_at is None]
            if len(pending) == len(status):
                raise SchemaNotReady(
                    f"schema {self._schema!r} has no convostore tables; create them with `convostore migrate`"
                )
            if pending:
                raise SchemaNotReady(
                    f"schema {self._schema!r} has {len(pending)} pending migrations; "
                    "apply them with `convostore migrate`"
                )

    async def close(self) -> None:
        """Stop the sweeper, let queued appends finish, and close every pool. Later calls raise
        :class:`StoreClosed` until ``connect()`` is called again."""
        await self.stop_sweeper()
        writer = self._runner.find_local("appends")
        if isinstance(writer, AppendWriter):
            await writer.drain()
        await self._runner.close()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def migrate(self) -> list[Migration]:
        """Apply pending migrations (safe to run from many processes at once)."""
        return await self._run("migrate", lambda conn: apply_migrations(conn, self._schema))

    async def distribute(self) -> Distribution:
        """Distribute the tables and the append and read functions over the Citus cluster
        this store connects to (its coordinator); see :func:`convostore.migrations.distribute`."""
        done = await self._run("distribute", lambda conn: distribute(conn, self._schema))
        self._runner.distributed = True
        return done

    async def migration_status(self) -> list[MigrationStatus]:
        """Every known migration with the time it was applied, or ``None`` if pending."""
        return await self._run("migration status", lambda conn: migration_status(conn, self._schema))

    def _run(
        self,
        what: str,
        fn: Callable[[Connection], Awaitable[T]],
        *,
        session_id: str | None = None,
        idempotent: bool = True,
        all_tenants: bool = False,
    ) -> Awaitable[T]:
        """Run *fn* in this store's scope (see :meth:`Runner.run <convostore._runner.Runner.run>`)."""
        scope = self.scope(all_tenants)
        return self._runner.run(what, fn, session_id=session_id, idempotent=idempotent, scope=scope)

    def _write(
        self,
        what: str,
        fn: Callable[[Connection], Awaitable[T]],
        *,
        session_id: str | None = None,
        idempotent: bool = True,
        all_tenants: bool = False,
    ) -> Awaitable[T]:
        """A write: like :meth:`_run`, but a cancelled caller waits for the write to settle."""
        return settle_despite_cancel(
            self._run(what, fn, session_id=session_id, idempotent=idempotent, all_tenants=all_tenants)
        )

    # -- sessions ----------------------------------------------------------------------------

    async def create_session(
        self,
        user_id: str | None,
        agent_name: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        session_id: str | None = None,
        ttl: timedelta | float | None = None,
        expires_in: timedelta | float | None = None,
    ) -> Session:
        """Create a session of *user_id* (in a user view, ``None`` means the view's user) and
        return it; the id is generated unless *session_id* is given.

        *ttl* gives the session a sliding expiry, *ttl* after its last activity; *expires_in*
        a fixed one (one or the other, at most 100 years). Expired sessions are removed by
        :meth:`delete_expired_sessions`. An existing *session_id* raises :class:`SessionExists`.
        """
        owner = self.acting_user(user_id)
        if owner is None:
            raise InvalidIdentifier("user_id must be given (the session's owner)")
        if ttl is not None and expires_in is not None:
            raise InvalidInput("give ttl (a sliding expiry) or expires_in (a fixed one), not both")
        chosen = session_id is not None
        sid = check.new_session_id(session_id) if chosen else str(uuid.uuid4())
        args = (
            self._tenant,
            sid,
            owner,
            check.identifier(agent_name, "agent_name"),
            check.metadata(metadata),
            check.duration(ttl, "ttl"),
            check.duration(expires_in, "expires_in"),
        )
        attempts = 0

        async def create(conn: Connection) -> Any:
            nonlocal attempts
            attempts += 1
            try:
                return await conn.fetchrow(self._q.create_session, *args)
            except asyncpg.UniqueViolationError:
                if chosen or attempts == 1:
                    raise SessionExists(f"session {sid!r} already exists") from None
                # Our own new id, found on a retry: the first attempt committed unacknowledged.
                # Read it back in a call of its own: here the statement's transaction (the
                # row-level security scope's, if any) is aborted, and its COMMIT rolls back.
                return None

        row = await self._write("create_session", create, session_id=sid)
        if row is None:
            rows = await self._run(
                "create_session", partial(_fetch, self._q.get_session, (self._tenant, sid)), session_id=sid
            )
            if not rows:
                raise SessionNotFound(f"session {sid!r} was created, then deleted before it could be read back")
            row = rows[0]
        return session_from_row(row)

    async def get_session(self, session_id: str) -> Session | None:
        """The session with all its messages in order, or ``None`` if it does not exist."""
        sid = check.identifier(session_id, "session_id")
        rows = await self._run("get_session", lambda c: c.fetch(self._q.get_session, self._tenant, sid), session_id=sid)
        found = sessions_from_joined_rows(rows, self._opener)
        if not found:
            return None
        if self._user is not None and found[0].user_id != self._user:
            raise SessionOwnershipError(f"session {sid!r} belongs to another user")
        return found[0]

    async def _missing(self, sid: str) -> SessionNotFound | SessionOwnershipError:
        """Why a statement scoped to this view's user found no session *sid*."""
        if self._user is not None:
            owner = await self._run("check owner", lambda c: c.fetchval(self._q.session_owner, self._tenant, sid))
            if owner is not None:
                return SessionOwnershipError(f"session {sid!r} belongs to another user")
        return SessionNotFound(f"session {sid!r} does not exist")

    async def update_metadata(self, session_id: str, patch: Mapping[str, Any]) -> Session:
        """Merge *patch* into the session's metadata (top-level keys; JSONB ``||``)."""
        sid = check.identifier(session_id, "session_id")
        if patch is None:
            raise InvalidMetadata("patch must be a mapping, not None")
        data = check.metadata(patch)
        row = await self._write(
            "update_metadata",
            lambda c: c.fetchrow(self._q.update_metadata, self._tenant, sid, self._user, data),
            session_id=sid,
        )
        if row is None:
            raise await self._missing(sid)
        return session_from_row(row)

    async def set_expiry(
        self,
        session_id: str,
        *,
        ttl: timedelta | float | None = None,
        expires_in: timedelta | float | None = None,
    ) -> Session:
        """Set (or with neither argument, remove) a session's expiry; see :meth:`create_session`."""
        sid = check.identifier(session_id, "session_id")
        sliding, fixed = check.duration(ttl, "ttl"), check.duration(expires_in, "expires_in")
        if sliding is not None and fixed is not None:
            raise InvalidInput("give ttl (a sliding expiry) or expires_in (a fixed one), not both")
        row = await self._write(
            "set_expiry",
            lambda c: c.fetchrow(self._q.set_expiry, self._tenant, sid, self._user, sliding, fixed),
            session_id=sid,
        )
        if row is None:
            raise await self._missing(sid)
        return session_from_row(row)

    async def delete_session(self, session_id: str) -> bool:
        """Delete the session and its messages; ``False`` if it did not exist. Audited."""
        sid = check.identifier(session_id, "session_id")
        gone = await self._write(
            "delete_session",
            lambda c: c.fetchval(self._q.delete_session, self._tenant, sid, self._user, self._actor),
            session_id=sid,
        )
        if not gone and self._user is not None:
            missing = await self._missing(sid)
            if isinstance(missing, SessionOwnershipError):
                raise missing
        return bool(gone)

    async def get_user_sessions(
        self,
        user_id: str | None = None,
        limit: int = 10,
        *,
        before: Session | SessionCursor | None = None,
        with_messages: bool = True,
        messages_limit: int | None = None,
        agent_name: str | None = None,
    ) -> list[Session]:
        """A user's sessions (in a user view, ``None`` means the view's user), most recently
        updated first, in one query.

        Pass the last session of a page as *before* for the next page (keyset pagination:
        as fast on page 1,000 as on page 1). With *with_messages*, each session carries its
        messages (the latest *messages_limit* of them, if given); without, only their count.
        """
        uid = self.acting_user(user_id)
        if uid is None:
            raise InvalidIdentifier("user_id must be given")
        page = check.limit(limit)
        per_session = check.limit(messages_limit, "messages_limit")
        agent = check.optional_identifier(agent_name, "agent_name")
        cursor = check.cursor(before)
        after_time = cursor.updated_at if cursor else None
        after_id = cursor.id if cursor else None
        if with_messages:
            args = (self._tenant, uid, after_time, after_id, page, agent, per_session)
            rows = await self._run("get_user_sessions", lambda c: c.fetch(self._q.user_sessions_with_messages, *args))
            return sessions_from_joined_rows(rows, self._opener)
        rows = await self._run(
            "get_user_sessions",
            lambda c: c.fetch(self._q.user_sessions, self._tenant, uid, after_time, after_id, page, agent),
        )
        return [session_from_row(r, count=r["message_count"]) for r in rows]

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        agent_name: str | None = None,
        updated_since: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int = 20,
        before: Session | SessionCursor | None = None,
    ) -> list[Session]:
        """The tenant's sessions (in a user view, its user's), most recently updated first,
        each with its message count: of one user, of one agent, updated since a time, whose
        metadata contains *metadata* (JSON containment); keyset-paginated with *before*."""
        uid = self.acting_user(user_id)
        agent = check.optional_identifier(agent_name, "agent_name")
        page = check.limit(limit)
        if not page or page > 1000:
            raise InvalidInput("limit must be between 1 and 1000")
        if updated_since is not None and (not isinstance(updated_since, datetime) or updated_since.tzinfo is None):
            raise InvalidInput("updated_since must be a timezone-aware datetime")
        contains = None if metadata is None else check.metadata(metadata)
        cursor = check.cursor(before)
        after_time, after_id = (cursor.updated_at, cursor.id) if cursor else (None, None)
        args = (self._tenant, uid, after_time, after_id, page, agent, updated_since, contains)
        rows = await self._run("list_sessions", lambda c: c.fetch(self._q.list_sessions, *args))
        return [session_from_row(r, count=r["message_count"]) for r in rows]

    # -- messages ----------------------------------------------------------------------------

    async def add_message(
        self,
        session_id: str,
        role: str,
        content: str,
        tool_calls: list[Any] | None = None,
        tool_call_id: str | None = None,
        *,
        message_id: str | None = None,
        raw: Any | None = None,
    ) -> Message:
        """Append one message; see :meth:`add_messages`."""
        message = NewMessage(role, content, tool_calls, tool_call_id, message_id, raw)
        return (await self.add_messages(session_id, [message]))[0]

    async def add_messages(
        self,
        session_id: str,
        messages: Sequence[NewMessage | Mapping[str, Any]],
        *,
        user_id: str | None = None,
        agent_name: str = "agent",
        branch: str = "main",
    ) -> list[Message]:
        """Append *messages* atomically in one round trip and return them as stored.

        The batch gets consecutive ``seq`` numbers after every message committed before it,
        and the session's ``updated_at`` (and sliding expiry) move in the same call.
        Appending a batch whose ids are already stored (a retry) returns the stored rows and
        writes nothing; reusing an id for a different message raises :class:`DuplicateMessageId`.

        Without *user_id*, an unknown session raises :class:`SessionNotFound`. With it, the
        session is created on first write (owned by *user_id*, for *agent_name*) and a
        session owned by another user raises :class:`SessionOwnershipError` (as it does in a
        user view, whose user owns what it creates).

        *branch* is the branch written to (see :meth:`fork_session`); one the session does not
        have raises :class:`BranchNotFound`.
        """
        # With user_id the append may create the session.
        sid = check.identifier(session_id, "session_id") if user_id is None else check.new_session_id(session_id)
        line = check.identifier(branch, "branch")
        owner = self.acting_user(user_id)
        agent = check.identifier(agent_name, "agent_name") if user_id is not None else None
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
            raise InvalidMessage("messages must be a sequence of NewMessage or mappings")
        rows = [check.message_row(m, i) for i, m in enumerate(messages)]
        if not rows:
            return []
        if self._count_tokens is not None:
            rows = [row._replace(tokens=self._tokens(row)) for row in rows]
        plain, rows = rows, await self.sealed_rows(sid, rows, line)
        ids = [r.id for r in rows]
        if len(set(ids)) != len(ids):
            raise InvalidMessage("message ids must be unique within a batch")
        supplied = any((m.id if isinstance(m, NewMessage) else m.get("id")) is not None for m in messages)
        request = AppendRequest(self._tenant, sid, rows, owner, agent, probe=supplied, branch=line)
        deadline = self._runner.deadline()
        if self._coalesce:
            writer = self._runner.loop_local("appends", lambda: AppendWriter(self._appender))
            stored = await writer.submit(request, deadline)
        else:
            stored = await settle_despite_cancel(self._appender.one(request, deadline=deadline))
        if len(stored) != len(rows) or (
            any(r["outcome"] == Outcome.CONFLICT for r in stored) and not await self._same_after_all(sid, stored, plain)
        ):
            raise DuplicateMessageId(
                f"session {sid!r} already holds different messages with some of these ids: "
                f"{sorted({r['id'] for r in stored})[:5]}"
            )
        by_id = {r["id"]: r for r in stored}
        result = []
        for row, original in zip(rows, messages, strict=True):
            rec = by_id[row.id]
            if isinstance(original, NewMessage):
                role, content, tool_calls = original.role, original.content, original.tool_calls
                tool_call_id, raw = original.tool_call_id, original.raw
            else:
                role, content, tool_calls = original["role"], original["content"], original.get("tool_calls")
                tool_call_id, raw = original.get("tool_call_id"), original.get("raw")
            result.append(
                new_message(
                    row.id, sid, rec["seq"], role, content, tool_calls, tool_call_id, raw, rec["created_at"], line, None
                )
            )
        result.sort(key=lambda m: m.seq)
        return result

    async def _same_after_all(self, sid: str, stored: Sequence[Any], sent: Sequence[Any]) -> bool:
        """Whether the stored rows the append function found holding other messages (CONFLICT)
        hold the same ones after all: the digest it compares is keyed, so a row sealed under
        another key (rotation since), or stored before encryption, never matches it. Read
        and opened here, off the normal path (a replay under the current key is REPLAYED)."""
        if self._keyring is None:
            return False
        conflicting = [r["id"] for r in stored if r["outcome"] == Outcome.CONFLICT]
        args: tuple[Any, ...] = (self._tenant, [sid] * len(conflicting), conflicting, [])
        found = await self._run("add_messages", partial(_fetch, self._q.import_stored_messages, args), session_id=sid)
        by_id = {r["id"]: r for r in found}
        sent_by_id = {row.id: row for row in sent}
        for mid in conflicting:
            row = by_id.get(mid)
            if row is None:
                return False
            if row["sealed"] is None:
                opened = (row["content"], row["tool_calls"], row["raw"])
            else:
                opened = self._opener(
                    sid, mid, row["key_id"], row["sealed"], row["role"], row["tool_call_id"], row["branch"]
                )
            if not same_message(row, opened, sent_by_id[mid]):
                return False
        return True

    def _tokens(self, row: Row) -> int:
        """A validated row's token count by the store's counter (its raw item, else its text)."""
        assert self._count_tokens is not None
        count = self._count_tokens(check.token_text(row.content, row.tool_calls, row.raw))
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigurationError(f"token_counter returned {count!r}, not a non-negative int")
        return count

    async def get_messages(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        user_id: str | None = None,
        branch: str = "main",
        window: Window | None = None,
        raw: bool = False,
    ) -> list[Message]:
        """Messages in chronological order: all of them, or the latest *limit*.

        *before_seq* pages backwards: pass the ``seq`` of the oldest message you hold to get
        the *limit* messages before it; *after_seq* pages forwards (the first *limit* after
        it). An unknown session has no messages (``[]``). With
        *user_id* (or in a user view), a session owned by another user raises
        :class:`SessionOwnershipError` (checked in the same query).

        What is read is the view of *branch* (its own messages after its parent's up to the
        fork; an unknown branch raises :class:`BranchNotFound`), compacted: the messages a
        compaction summary stands for are left out, unless *raw*. A *window*
        (:class:`~convostore.windows.Window`) reads only the latest turns or tokens, cut
        where nothing is parted from what it belongs to; *limit* then caps it further.
        """
        sid = check.identifier(session_id, "session_id")
        n = check.limit(limit)
        below = check.limit(before_seq, "before_seq")
        above = check.limit(after_seq, "after_seq")
        uid = self.acting_user(user_id)
        line = check.identifier(branch, "branch")
        if window is not None and not isinstance(window, Window):
            raise InvalidInput(f"window must be a Window, not {type(window).__name__}")
        if window is not None and above is not None:
            raise InvalidInput("a window is the latest messages: it cannot page forwards (after_seq)")
        if not isinstance(raw, bool):
            raise InvalidInput(f"raw must be a bool, not {type(raw).__name__}")
        turns, budget, pinned = (window.turns, window.tokens, window.pinned) if window else (None, None, False)
        args = (self._tenant, sid, uid, below, n, line, raw, turns, budget, pinned, above)
        # No scope transaction around it: the read function sets its scope itself (as the
        # append function does), which saves the round trips of one under row-level security.
        rows = await self._runner.run(
            "get_messages", lambda c: c.fetch(self._q.read, *args), session_id=sid, route=True
        )
        if uid is not None and rows and rows[0]["owner"] != uid:
            raise SessionOwnershipError(f"session {sid!r} belongs to another user")
        messages = messages_from_rows([r[1:] for r in rows if r["id"] is not None], sid, self._opener)
        if window is not None and (window.turns is not None or window.tokens is not None):
            return fit(messages, pinned=window.pinned)
        return messages

    async def _check_owner(self, sid: str, uid: str) -> None:
        owner = await self._run(
            "check owner", lambda c: c.fetchval(self._q.session_owner, self._tenant, sid), session_id=sid
        )
        if owner is not None and owner != uid:
            raise SessionOwnershipError(f"session {sid!r} belongs to another user")

    async def pop_message(self, session_id: str, *, user_id: str | None = None, branch: str = "main") -> Message | None:
        """Remove and return the newest message (``None`` if there is none).

        Atomic: concurrent pops each get a different message. Not retried after a failure
        that may have taken effect, since a retry could pop a second message. With
        *user_id* (or in a user view), another user's session raises
        :class:`SessionOwnershipError`. In a forked session, the newest message of *branch*'s
        view is popped, unless another branch shares it (:class:`BranchConflict`).
        """
        sid = check.identifier(session_id, "session_id")
        uid = self.acting_user(user_id)
        line = check.identifier(branch, "branch")
        if line == _branches.MAIN:
            row = await self._write(
                "pop_message",
                lambda c: c.fetchrow(self._q.pop_message, self._tenant, sid, uid),
                session_id=sid,
                idempotent=False,
            )
            if row is not None:
                return messages_from_rows([row], sid, self._opener)[0]
        # Empty, another user's, or forked (whose branches share rows): decided under the lock.
        return await self._write(
            "pop_message",
            self._in_transaction(_branches.pop, sid, uid, line, self._opener),
            session_id=sid,
            idempotent=False,
        )

    def _in_transaction(
        self, operation: Callable[..., Awaitable[T]], *args: Any
    ) -> Callable[[Connection], Awaitable[T]]:
        """*operation* (one of :mod:`convostore._branches`) to run in one transaction."""

        async def run(conn: Connection) -> T:
            if conn.is_in_transaction():  # the row-level security scope's, begun by the runner
                return await operation(conn, self._q, self._tenant, *args)
            async with conn.transaction():
                return await operation(conn, self._q, self._tenant, *args)

        return run

    async def clear_session(self, session_id: str, *, user_id: str | None = None, branch: str | None = None) -> int:
        """Delete every message of the session (the session stays); return how many. Audited.

        With *user_id* (or in a user view), another user's session raises
        :class:`SessionOwnershipError`. Without *branch*, every branch goes too; with it, that
        branch's view is emptied, and its messages that other branches share stay theirs.
        """
        sid = check.identifier(session_id, "session_id")
        uid = self.acting_user(user_id)
        if branch is not None:
            line = check.identifier(branch, "branch")
            cleared = await self._write(
                "clear_session", self._in_transaction(_branches.clear, sid, uid, line), session_id=sid
            )
            if cleared is not None:
                await self.audit("clear_branch", rows=cleared, details={"session_id": sid, "branch": line})
                return cleared
        count = await self._write(
            "clear_session",
            lambda c: c.fetchval(self._q.clear_session, self._tenant, sid, uid, self._actor),
            session_id=sid,
        )
        if not count and uid is not None:
            await self._check_owner(sid, uid)
        return int(count)

    # -- branches ----------------------------------------------------------------------------

    async def fork_session(
        self,
        session_id: str,
        name: str,
        *,
        at_seq: int | None = None,
        parent: str = "main",
        user_id: str | None = None,
    ) -> Branch:
        """Fork branch *parent* of the session at seq *at_seq* (default: its latest message;
        ``0``: none of them) as branch *name*, and return it.

        Nothing is copied: the branch's view is *parent*'s up to *at_seq*, then its own
        messages (append with ``branch=name``). Raises :class:`BranchExists` for a name the
        session has, :class:`BranchNotFound` for an unknown *parent*, :class:`InvalidInput`
        if *at_seq* is not a message of *parent*'s view.
        """
        sid = check.identifier(session_id, "session_id")
        line = check.identifier(name, "name")
        origin = check.identifier(parent, "parent")
        at = check.limit(at_seq, "at_seq")
        uid = self.acting_user(user_id)
        return await self._write(
            "fork_session",
            self._in_transaction(_branches.fork, sid, uid, line, origin, at),
            session_id=sid,
            idempotent=False,
        )

    async def list_branches(self, session_id: str, *, user_id: str | None = None) -> list[Branch]:
        """The session's branches (``main`` first, unless deleted), each with the number of
        messages of its own; :class:`SessionNotFound` if there is no such session."""
        sid = check.identifier(session_id, "session_id")
        uid = self.acting_user(user_id)
        return await self._run("list_branches", self._in_transaction(_branches.branches, sid, uid), session_id=sid)

    async def delete_branch(self, session_id: str, name: str, *, user_id: str | None = None) -> int:
        """Delete branch *name* (``main`` too) and return how many messages were removed.
        Audited.

        Other branches stay whole: the messages of *name* that a branch forked from it
        shares stay stored for that branch (and go when nothing shares them any more).
        """
        sid = check.identifier(session_id, "session_id")
        line = check.identifier(name, "name")
        uid = self.acting_user(user_id)
        removed = await self._write(
            "delete_branch", self._in_transaction(_branches.delete, sid, uid, line), session_id=sid
        )
        await self.audit("delete_branch", rows=removed, details={"session_id": sid, "branch": line})
        return removed

    # -- compaction ----------------------------------------------------------------------------

    async def compact(
        self,
        session_id: str,
        summary: Sequence[NewMessage | Mapping[str, Any]],
        *,
        from_seq: int | None = None,
        expect: Sequence[int] | None = None,
        prune_to: int | None = None,
        branch: str = "main",
        user_id: str | None = None,
    ) -> list[Message] | None:
        """Replace, in the compacted view of *branch*, its messages from seq *from_seq* on
        (default: all of them) with *summary*, keeping them stored; return the stored summary.

        The replaced messages stay in the session (``get_messages(raw=True)``, export); each
        summary message ``covers`` their seq range. One transaction under the session's lock:
        appends made meanwhile land after the summary. With *expect* (the seqs of the view
        from *from_seq* on that the summary was made from), nothing is written and ``None``
        is returned if the view holds anything else by then; ``None`` too if there is
        nothing to replace. Retrying with the same summary ids is safe: a summary already
        stored is returned as it is. An empty *summary* replaces the messages with nothing:
        a marker row (role ``item``, never in the view) records the range, and ``[]`` is
        returned. With *prune_to*, the view's messages before *from_seq* up to that seq are
        hidden too, in the same transaction (a marker records their range).
        """
        sid = check.identifier(session_id, "session_id")
        line = check.identifier(branch, "branch")
        uid = self.acting_user(user_id)
        start = check.limit(from_seq, "from_seq")
        prune = check.limit(prune_to, "prune_to")
        expected = None if expect is None else [check.limit(e, "expect") for e in expect]
        if isinstance(summary, (str, bytes, Mapping)) or not isinstance(summary, Sequence):
            raise InvalidMessage("summary must be a sequence of NewMessage or mappings")
        empty = not summary
        rows = [check.message_row(m, i) for i, m in enumerate(summary or [EMPTY_SUMMARY])]
        if self._count_tokens is not None:
            rows = [row._replace(tokens=self._tokens(row)) for row in rows]
        rows = await self.sealed_rows(sid, rows, line)
        if len({r.id for r in rows}) != len(rows):
            raise InvalidMessage("message ids must be unique within a batch")
        columns = [list(c) for c in zip(*rows, strict=True)]
        args = (self._tenant, sid, uid, line, start, expected, *columns, prune)
        records = await self._write("compact", lambda c: c.fetch(self._q.compact, *args), session_id=sid)
        outcome = records[0]["outcome"] if records else Outcome.NO_SESSION
        if outcome == Outcome.NO_SESSION:
            raise SessionNotFound(f"session {sid!r} does not exist")
        if outcome == Outcome.OTHER_OWNER:
            raise SessionOwnershipError(f"session {sid!r} belongs to another user")
        if outcome in (Outcome.STALE, Outcome.NOTHING):
            return None
        if empty:
            return []
        stored = await self.get_messages(sid, raw=True, branch=line, before_seq=records[-1]["seq"] + 1, limit=len(rows))
        ids = {r["id"] for r in records}
        return [m for m in stored if m.id in ids]

    # -- search -------------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        limit: int = 20,
        offset: int = 0,
        snippet_words: int = 30,
        all_tenants: bool = False,
    ) -> list[SearchHit]:
        """Messages of the store's scope (a user view: its user's) matching *query*, best
        first: web search syntax (words, ``"a phrase"``, ``or``, ``-word``), English
        stemming, ranked by cover density. Narrowed to a session, a user or an agent; paged
        with *limit* and *offset*. Every stored message is searched, those a compaction
        replaced too; sealed (encrypted) messages are not searchable."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query must be a non-empty string")
        check.check_text(query, "query")
        if len(query) > 1000:
            raise InvalidInput("query is longer than 1,000 characters")
        sid = check.optional_identifier(session_id, "session_id")
        uid = self.acting_user(user_id)
        agent = check.optional_identifier(agent_name, "agent_name")
        n = check.limit(limit)
        skip = check.limit(offset, "offset")
        words = check.limit(snippet_words, "snippet_words")
        if not n or n > 1000:
            raise InvalidInput("limit must be between 1 and 1000")
        if not words or words > 200:
            raise InvalidInput("snippet_words must be between 1 and 200")
        tenant = await self.tenant_for(all_tenants)
        args = (tenant, uid, sid, agent, query.replace("\x00", ""), n, skip or 0, words, HIT_START, HIT_END)
        rows = await self._run(
            "search", lambda c: c.fetch(self._q.search, *args), session_id=sid, all_tenants=all_tenants
        )
        return [
            SearchHit(
                tenant=r["tenant_id"],
                session_id=r["session_id"],
                seq=r["seq"],
                message_id=r["id"],
                role=r["role"],
                branch=r["branch"],
                user_id=r["user_id"],
                created_at=r["created_at"],
                rank=float(r["rank"]),
                snippet=r["snippet"],
            )
            for r in rows
        ]

    async def search_index(self) -> bool:
        """Whether the full-text index :meth:`search` reads is built (and valid) in this schema."""
        valid = await self._runner.run(
            "search_index", lambda c: c.fetchval(self._q.search_index_state, quote_ident(self._schema))
        )
        return bool(valid)

    async def create_search_index(self, *, build_timeout: float | None = 3600.0) -> bool:
        """Build the full-text index that makes :meth:`search` fast (``CREATE INDEX
        CONCURRENTLY``: appends go on meanwhile); ``False`` if it was already there.

        Search is opt-in: without the index a search reads every message of its scope, and
        with it every append pays for indexing what it writes (the README gives the cost).
        Needs the tables' owner. *build_timeout* bounds the build (seconds; ``None``: unbounded);
        an interrupted build leaves an invalid index, which the next call replaces."""
        if build_timeout is not None and not (isinstance(build_timeout, (int, float)) and 0 < build_timeout < 10**7):
            raise InvalidInput("build_timeout must be positive seconds or None")
        state = await self._runner.run(
            "create_search_index", lambda c: c.fetchval(self._q.search_index_state, quote_ident(self._schema))
        )
        if state:
            return False

        async def build(conn: Connection) -> None:
            # No statement deadline of the session's may cut the build short.
            await conn.execute("SET statement_timeout = 0")
            try:
                if state is False:  # left invalid by an interrupted build
                    await conn.execute(self._q.search_index_drop, timeout=build_timeout)
                await conn.execute(self._q.search_index_create, timeout=build_timeout)
            finally:
                await conn.execute("RESET statement_timeout")

        loop = asyncio.get_running_loop()
        await self._runner.run(
            "create_search_index", build, deadline=loop.time() + (10**9 if build_timeout is None else build_timeout)
        )
        logger.info("built the full-text search index of schema %s", self._schema)
        return True

    async def drop_search_index(self) -> bool:
        """Drop the full-text index (``DROP INDEX CONCURRENTLY``): appends stop paying for it,
        and :meth:`search` reads every message of its scope. ``False`` if there was none."""
        state = await self._runner.run(
            "drop_search_index", lambda c: c.fetchval(self._q.search_index_state, quote_ident(self._schema))
        )
        if state is None:
            return False
        await self._runner.run("drop_search_index", lambda c: c.execute(self._q.search_index_drop))
        logger.info("dropped the full-text search index of schema %s", self._schema)
        return True

    # -- state beside conversations -----------------------------------------------------------

    def _state_owner(self, user_id: str | None) -> str:
        owner = self.acting_user(user_id) if user_id is not None else None
        return "" if owner is None else owner

    async def get_state(self, agent_name: str, *, user_id: str | None = None) -> dict[str, Any]:
        """The state an agent keeps beside its conversations: shared by all its users, or with
        *user_id*, that user's (``{}`` if none). Frameworks' app and user state live here."""
        agent = check.identifier(agent_name, "agent_name")
        owner = self._state_owner(user_id)
        state = await self._run("get_state", lambda c: c.fetchval(self._q.get_state, self._tenant, agent, owner))
        return {} if state is None else dict(load_json(state))

    async def update_state(
        self, agent_name: str, patch: Mapping[str, Any], *, user_id: str | None = None
    ) -> dict[str, Any]:
        """Merge *patch* into the agent's state (its users' shared state, or with *user_id*
        that user's): top-level keys replaced, atomically; return the new state."""
        agent = check.identifier(agent_name, "agent_name")
        owner = self._state_owner(user_id)
        value = check.metadata(patch)
        state = await self._write(
            "update_state", lambda c: c.fetchval(self._q.update_state, self._tenant, agent, owner, value)
        )
        return dict(load_json(state))

    # -- usage --------------------------------------------------------------------------------

    async def record_usage(
        self,
        session_id: str,
        usage: TurnUsage,
        *,
        usage_id: str | None = None,
        branch: str = "main",
        user_id: str | None = None,
    ) -> None:
        """Record what one turn of the session cost. Pass the same *usage_id* when retrying
        across processes: a turn is recorded once. Raises :class:`SessionNotFound` or
        :class:`SessionOwnershipError`."""
        sid = check.identifier(session_id, "session_id")
        uid = self.acting_user(user_id)
        line = check.identifier(branch, "branch")
        if not isinstance(usage, TurnUsage):
            raise InvalidInput(f"usage must be a TurnUsage, not {type(usage).__name__}")
        counts = []
        for name in ("requests", "input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens"):
            value = getattr(usage, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
                raise InvalidInput(f"usage.{name} must be a non-negative int, not {value!r}")
            counts.append(value)
        model = check.optional_identifier(usage.model, "usage.model")
        duration = usage.duration
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 <= duration < 1e9
        ):
            raise InvalidInput(f"usage.duration must be a non-negative number of seconds, not {duration!r}")
        uid_ = check.identifier(usage_id, "usage_id") if usage_id is not None else uuid.uuid4().hex
        args = (self._tenant, sid, uid, uid_, line, model, *counts, None if duration is None else float(duration))
        stored = await self._write("record_usage", lambda c: c.fetchval(self._q.record_usage, *args), session_id=sid)
        if stored is None:  # recorded before (a retry), or no such session of this user
            owner = await self._run(
                "record_usage", lambda c: c.fetchval(self._q.session_owner, self._tenant, sid), session_id=sid
            )
            if owner is None:
                raise SessionNotFound(f"session {sid!r} does not exist")
            if uid is not None and owner != uid:
                raise SessionOwnershipError(f"session {sid!r} belongs to another user")

    async def usage(
        self,
        *,
        by: str = "session",
        session_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        all_tenants: bool = False,
    ) -> list[UsageTotal]:
        """Usage totals grouped *by* ``"session"``, ``"user"``, ``"agent"`` or ``"day"`` (UTC),
        of the store's scope (a user view: that user's), optionally narrowed to a session, a
        user, an agent and a time range [*since*, *until*)."""
        if by not in ("session", "user", "agent", "day"):
            raise InvalidInput(f"by must be 'session', 'user', 'agent' or 'day', not {by!r}")
        for name, value in (("since", since), ("until", until)):
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise InvalidInput(f"{name} must be a timezone-aware datetime")
        sid = check.optional_identifier(session_id, "session_id")
        uid = self.acting_user(user_id)
        agent = check.optional_identifier(agent_name, "agent_name")
        tenant = await self.tenant_for(all_tenants)
        args = (tenant, uid, sid, agent, since, by, until)
        rows = await self._run(
            "usage", lambda c: c.fetch(self._q.usage_totals, *args), session_id=sid, all_tenants=all_tenants
        )
        return [UsageTotal(*r) for r in rows]

    # -- retention ---------------------------------------------------------------------------

    async def _delete_in_batches(
        self,
        what: str,
        sql: str,
        args: tuple[Any, ...],
        on_batch: Callable[[int], None] | None,
        all_tenants: bool,
    ) -> int:
        total = 0
        while True:
            rows = await self._write(what, lambda c: c.fetch(sql, *args), all_tenants=all_tenants)
            total += len(rows)
            if on_batch is not None and rows:
                on_batch(len(rows))
            # An empty batch means nothing eligible is left but rows that live writers (or
            # another sweeper) hold; those are not idle, or will be deleted by their holder. A
            # short batch does not: on distributed tables (no SKIP LOCKED) a batch whose rows
            # another sweeper deleted while it waited comes back short with more to do.
            if not rows:
                return total

    async def idle_cutoff(self, older_than: timedelta | float) -> datetime:
        """The server's time now minus *older_than*: sessions last updated before it are idle.

        Pass it as ``cutoff=`` to :meth:`count_idle_sessions` and :meth:`delete_idle_sessions`
        so that a count and the deletion that follows agree (what ``cleanup --dry-run`` shows).
        """
        age = check.duration(older_than, "older_than")
        cutoff = await self._run("idle_cutoff", lambda c: c.fetchval(self._q.idle_cutoff, age))
        assert isinstance(cutoff, datetime)
        return cutoff

    async def _cutoff(self, older_than: timedelta | float | None, cutoff: datetime | None) -> datetime:
        if (older_than is None) == (cutoff is None):
            raise InvalidInput("give older_than or cutoff (exactly one)")
        if cutoff is not None:
            if not isinstance(cutoff, datetime) or cutoff.tzinfo is None:
                raise InvalidInput("cutoff must be a timezone-aware datetime")
            return cutoff
        assert older_than is not None
        return await self.idle_cutoff(older_than)

    async def tenant_for(self, all_tenants: bool = False) -> str | None:
        """The tenant an operator call covers (``None``: every tenant, once the role is known
        to be allowed across tenants)."""
        if not all_tenants:
            return self._tenant
        await self._runner.run("connect", _nothing)  # the pool's role decides what is allowed
        self.scope(all_tenants=True)
        return None

    async def delete_idle_sessions(
        self,
        older_than: timedelta | float | None = None,
        *,
        cutoff: datetime | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        all_tenants: bool = False,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete sessions not updated for *older_than* (or since *cutoff*); return how many.

        The cutoff is fixed once, at the start, so a long cleanup never reaches sessions that
        were not idle long enough when it began. Works in batches of *batch_size*, each its
        own short transaction (and audit record), skipping sessions that a live writer holds
        locked (they are not idle). *all_tenants* widens it to every tenant (an operator's
        cleanup). *on_batch* is called with each batch's count (progress bars).
        """
        size = self._batch(batch_size)
        args = (
            await self.tenant_for(all_tenants),
            await self._cutoff(older_than, cutoff),
            self.acting_user(user_id),
            check.optional_identifier(agent_name, "agent_name"),
            size,
            self._actor,
        )
        sql = self._q.delete_idle_batch
        return await self._delete_in_batches("delete_idle_sessions", sql, args, on_batch, all_tenants)

    async def count_idle_sessions(
        self,
        older_than: timedelta | float | None = None,
        *,
        cutoff: datetime | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        all_tenants: bool = False,
    ) -> int:
        """How many sessions :meth:`delete_idle_sessions` would delete now."""
        args = (
            await self.tenant_for(all_tenants),
            await self._cutoff(older_than, cutoff),
            self.acting_user(user_id),
            check.optional_identifier(agent_name, "agent_name"),
        )
        count = await self._run(
            "count_idle_sessions", lambda c: c.fetchval(self._q.count_idle, *args), all_tenants=all_tenants
        )
        return int(count)

    async def delete_expired_sessions(
        self,
        *,
        all_tenants: bool = False,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete sessions whose expiry has passed; safe to run from several processes at once.
        Audited per batch; *all_tenants* widens it to every tenant."""
        size = self._batch(batch_size)
        args = (await self.tenant_for(all_tenants), size, self._user, self._actor)
        sql = self._q.delete_expired_batch
        return await self._delete_in_batches("delete_expired_sessions", sql, args, on_batch, all_tenants)

    async def delete_user(
        self, user_id: str | None = None, *, batch_size: int = 500, on_batch: Callable[[int], None] | None = None
    ) -> ErasureReport:
        """Erase every session and message of *user_id* in this tenant (right to erasure).

        Batched: each batch of sessions is deleted with its messages in one statement (with
        its audit record), so a failure never leaves a session without some of its messages;
        re-running finishes the job.
        """
        uid = self.acting_user(user_id)
        if uid is None:
            raise InvalidIdentifier("user_id must be given")
        size = self._batch(batch_size)
        sessions = messages = 0
        while True:
            row = await self._write(
                "delete_user", lambda c: c.fetchrow(self._q.delete_user_batch, self._tenant, uid, size, self._actor)
            )
            assert row is not None
            sessions += row["sessions"]
            messages += row["messages"]
            if on_batch is not None and row["sessions"]:
                on_batch(row["sessions"])
            if row["sessions"] < size:
                return ErasureReport(uid, sessions, messages)

    def start_sweeper(self, interval: float, *, batch_size: int = 1000) -> Sweeper:
        """Delete expired sessions of this store's tenant every *interval* seconds in a
        background task of the running event loop.

        Returns the running :class:`~convostore.cleanup.Sweeper`; :meth:`stop_sweeper` (or
        :meth:`close`) stops it. Safe with other processes sweeping the same database.
        """
        if self._sweeper is None or not self._sweeper.running:
            self._sweeper = Sweeper(self.delete_expired_sessions, interval, batch_size=batch_size)
            self._sweeper.start()
        return self._sweeper

    async def stop_sweeper(self) -> None:
        """Stop the background sweeper, if one runs."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            await sweeper.stop()

    async def stats(self, *, all_tenants: bool = False) -> StoreStats:
        """Counts, per-agent totals, table and index sizes, oldest and newest activity of this
        tenant (of this view's user; of every tenant with *all_tenants*).

        Three statements; it scans both tables, so it is an operator's tool, not a hot path.
        """
        tenant = await self.tenant_for(all_tenants)

        async def read(conn: Connection) -> StoreStats:
            totals = await conn.fetchrow(self._q.stats, tenant, self._user)
            agents = await conn.fetch(self._q.stats_by_agent, tenant, self._user)
            sizes = await conn.fetch(self._q.stats_sizes, self._schema)
            assert totals is not None
            return StoreStats(
                sessions=totals["sessions"],
                messages=totals["messages"],
                users=totals["users"],
                sessions_with_expiry=totals["with_expiry"],
                oldest_session=totals["oldest_session"],
                newest_activity=totals["newest_activity"],
                by_agent=tuple(AgentStats(r["agent_name"], r["sessions"], r["messages"]) for r in agents),
                tables=tuple(TableSize(r["name"], r["table_bytes"], r["index_bytes"]) for r in sizes),
            )

        return await self._run("stats", read, all_tenants=all_tenants)

    def audit_args(
        self, action: str, *, rows: int, all_tenants: bool = False, details: Mapping[str, Any] | None = None
    ) -> tuple[Any, ...]:
        """The arguments of the ``audit`` statement recording *action* made through this store
        (for convostore's own modules: export and import)."""
        tenant = None if all_tenants else self._tenant
        return (action, self._actor, tenant, self._user, None, rows, check.metadata(details))

    async def audit(
        self, action: str, *, rows: int, all_tenants: bool = False, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record *action* in the audit trail (see :meth:`audit_args`)."""
        args = self.audit_args(action, rows=rows, all_tenants=all_tenants, details=details)
        await self._write("audit", lambda c: c.execute(self._q.audit, *args), all_tenants=all_tenants)

    async def rekey(
        self,
        *,
        include_plaintext: bool = False,
        all_tenants: bool = False,
        batch_size: int = 500,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Re-seal every message sealed with another master key than the current one (key
        rotation), and with *include_plaintext* seal the messages stored before encryption
        was turned on; return how many. Needs the current key first in the store's keys and
        the old ones after it.

        Runs in batches while appends go on (new messages are sealed with the current key
        already). A row is re-sealed only if it still holds what was read, so two rekeys at
        once, or a rekey re-run after a failure, never seal a row twice.
        """
        keyring = self._keyring
        if keyring is None:
            raise ConfigurationError("rekey needs encryption keys (CONVOSTORE_ENCRYPTION_KEYS), the new one first")
        tenant = await self.tenant_for(all_tenants)
        size = self._batch(batch_size)
        after: tuple[str, str, int] = ("", "", 0)
        total = 0
        while True:
            page_args = (tenant, *after, keyring.current_label, include_plaintext, size)
            rows = await self._run("rekey", partial(_fetch, self._q.rekey_page, page_args), all_tenants=all_tenants)
            if not rows:
                return total
            columns: list[list[Any]] = [[] for _ in range(7)]
            tenants = self._runner.loop_local("sealed_tenants", SealedTenants)
            for t in sorted({r["tenant_id"] for r in rows}):  # sealed from now on, if not already
                await tenants.mark(self._runner, self._q.get_state, self._q.update_state, t, (t, "*"))
            for r in rows:
                content, tool_calls, raw = r["content"], r["tool_calls"], r["raw"]
                bound = {"role": r["role"], "tool_call_id": r["tool_call_id"], "branch": r["branch"]}
                if r["sealed"] is not None:
                    content, tool_calls, raw = keyring.open(
                        r["tenant_id"], r["session_id"], r["id"], r["key_id"], r["sealed"], **bound
                    )
                # Re-sealed under the current key and layout: rows of the first layout bind
                # their role, tool-call id and branch from now on.
                sealed = keyring.seal(r["tenant_id"], r["session_id"], r["id"], content, tool_calls, raw, **bound)
                values = (
                    r["tenant_id"],
                    r["session_id"],
                    r["seq"],
                    r["key_id"],
                    sealed.digest,
                    sealed.key_id,
                    sealed.sealed,
                )
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
            status = await self._write(
                "rekey", partial(_execute, self._q.rekey_update, tuple(columns)), all_tenants=all_tenants
            )
            count = int(status.split()[-1])
            total += count
            if on_batch is not None:
                on_batch(count)
            last = rows[-1]
            after = (last["session_id"], last["tenant_id"], last["seq"])

    @staticmethod
    def _batch(size: object) -> int:
        n = check.limit(size, "batch_size")
        if not n:
            raise InvalidInput("batch_size must be a positive int")
        return n
