"""``PostgresSessionStore``: sessions and their messages in PostgreSQL.

The store is the API; statements run through a :class:`~convostore._runner.Runner`, which
owns the pools (one per event loop), the attempts within each call's deadline and the error
classification. The store is usable at once: the first call in an event loop opens that
loop's pool (and, the first time, migrates or checks the schema).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import asyncpg

from . import _validate as check
from ._appends import Appender, AppendRequest
from ._coalesce import AppendWriter
from ._rows import messages_from_rows, session_from_row, sessions_from_joined_rows
from ._runner import PoolOptions, Runner, redact, settle_despite_cancel
from ._sql import Queries, render
from ._types import Connection
from .errors import (
    DuplicateMessageId,
    InvalidInput,
    InvalidMessage,
    InvalidMetadata,
    SchemaNotReady,
    SessionExists,
    SessionNotFound,
    SessionOwnershipError,
    StoreClosed,
)
from .migrations import Migration, MigrationStatus, apply_migrations, migration_status
from .models import (
    AgentStats,
    Message,
    NewMessage,
    Session,
    SessionCursor,
    StoreStats,
    TableSize,
    new_message,
)
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .cleanup import Sweeper

logger = logging.getLogger("convostore")

T = TypeVar("T")

__all__ = ["ErasureReport", "PostgresSessionStore", "redact"]


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
    * ``min_size`` / ``max_size``: bounds of each event loop's pool.
    * ``command_timeout``: per-statement limit; ``acquire_timeout``: wait for a pooled
      connection; ``connect_timeout``: opening a connection. Each is further bounded by what
      is left of the call's deadline.
    * ``pgbouncer=True``: no server-side prepared statement cache (transaction pooling).
    * ``apply_migrations``: migrate on first use (default); ``False`` instead checks that the
      schema exists and is up to date, raising :class:`~convostore.errors.SchemaNotReady`;
      ``None`` does neither (for tools that manage the schema, like ``convostore migrate``).
    * ``coalesce_appends``: concurrent appends share statements and commits (see
      :mod:`convostore._coalesce`); a lone append is sent at once either way.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str | None = None,
        tenant: str | None = None,
        apply_migrations: bool | None = True,
        command_timeout: float | None = 30.0,
        acquire_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        pgbouncer: bool = False,
        coalesce_appends: bool = True,
        max_inactive_connection_lifetime: float = 300.0,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self._schema = schema or os.environ.get("CONVOSTORE_SCHEMA") or "public"
        self._q: Queries = render(self._schema)  # validates the schema name now
        self._tenant = check.identifier(tenant or os.environ.get("CONVOSTORE_TENANT") or "default", "tenant")
        self._apply_migrations = apply_migrations
        options = PoolOptions(
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            acquire_timeout=acquire_timeout,
            connect_timeout=connect_timeout,
            max_inactive_connection_lifetime=max_inactive_connection_lifetime,
            pgbouncer=pgbouncer,
            connect_kwargs=dict(connect_kwargs or {}),
        )
        self._runner = Runner(database_url, options, retry or RetryPolicy.from_env(), prepare=self._prepare)
        self._appender = Appender(self._runner, self._q)
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
    def database_url(self) -> str | None:
        """The URL in use once resolved (``None`` before first use if none was given)."""
        return self._runner.url

    @property
    def runner(self) -> Runner:
        """Where this store's statements run (for convostore's own modules: transfer, adapters)."""
        return self._runner

    @property
    def queries(self) -> Queries:
        """This store's SQL, rendered for its schema (for convostore's own modules)."""
        return self._q

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
        """Run once per new pool, before any call uses it: migrate, or check the schema."""
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
    ) -> Awaitable[T]:
        return self._runner.run(what, fn, session_id=session_id, idempotent=idempotent)

    def _write(
        self,
        what: str,
        fn: Callable[[Connection], Awaitable[T]],
        *,
        session_id: str | None = None,
        idempotent: bool = True,
    ) -> Awaitable[T]:
        """A write: like :meth:`_run`, but a cancelled caller waits for the write to settle."""
        return settle_despite_cancel(self._runner.run(what, fn, session_id=session_id, idempotent=idempotent))

    # -- sessions ----------------------------------------------------------------------------

    async def create_session(
        self,
        user_id: str,
        agent_name: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        session_id: str | None = None,
        ttl: timedelta | float | None = None,
        expires_in: timedelta | float | None = None,
    ) -> Session:
        """Create a session and return it (id generated unless *session_id* is given).

        *ttl* gives the session a sliding expiry, renewed by every append; *expires_in* a
        fixed one (each at most 100 years). Expired sessions are removed by
        :meth:`delete_expired_sessions`. An existing *session_id* raises :class:`SessionExists`.
        """
        sid = check.identifier(session_id, "session_id") if session_id is not None else str(uuid.uuid4())
        args = (
            self._tenant,
            sid,
            check.identifier(user_id, "user_id"),
            check.identifier(agent_name, "agent_name"),
            check.metadata(metadata),
            check.duration(ttl, "ttl"),
            check.duration(expires_in, "expires_in"),
        )

        async def create(conn: Connection) -> Any:
            try:
                return await conn.fetchrow(self._q.create_session, *args)
            except asyncpg.UniqueViolationError:
                # Also what a retry finds when its first attempt committed unacknowledged:
                # the caller chose the id, so it can tell by reading the session.
                raise SessionExists(f"session {sid!r} already exists") from None

        row = await self._write("create_session", create, session_id=sid)
        return session_from_row(row)

    async def get_session(self, session_id: str) -> Session | None:
        """The session with all its messages in order, or ``None`` if it does not exist."""
        sid = check.identifier(session_id, "session_id")
        rows = await self._run("get_session", lambda c: c.fetch(self._q.get_session, self._tenant, sid), session_id=sid)
        found = sessions_from_joined_rows(rows)
        return found[0] if found else None

    async def update_metadata(self, session_id: str, patch: Mapping[str, Any]) -> Session:
        """Merge *patch* into the session's metadata (top-level keys; JSONB ``||``)."""
        sid = check.identifier(session_id, "session_id")
        if patch is None:
            raise InvalidMetadata("patch must be a mapping, not None")
        data = check.metadata(patch)
        row = await self._write(
            "update_metadata",
            lambda c: c.fetchrow(self._q.update_metadata, self._tenant, sid, None, data),
            session_id=sid,
        )
        if row is None:
            raise SessionNotFound(f"session {sid!r} does not exist")
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
        clear = sliding is None and fixed is None
        row = await self._write(
            "set_expiry",
            lambda c: c.fetchrow(self._q.set_expiry, self._tenant, sid, None, sliding, clear, fixed),
            session_id=sid,
        )
        if row is None:
            raise SessionNotFound(f"session {sid!r} does not exist")
        return session_from_row(row)

    async def delete_session(self, session_id: str) -> bool:
        """Delete the session and its messages; ``False`` if it did not exist."""
        sid = check.identifier(session_id, "session_id")
        status = await self._write(
            "delete_session", lambda c: c.execute(self._q.delete_session, self._tenant, sid, None), session_id=sid
        )
        return status != "DELETE 0"

    async def get_user_sessions(
        self,
        user_id: str,
        limit: int = 10,
        *,
        before: Session | SessionCursor | None = None,
        with_messages: bool = True,
        messages_limit: int | None = None,
        agent_name: str | None = None,
    ) -> list[Session]:
        """A user's sessions, most recently updated first, in one query.

        Pass the last session of a page as *before* for the next page (keyset pagination:
        as fast on page 1,000 as on page 1). With *with_messages*, each session carries its
        messages (the latest *messages_limit* of them, if given); without, only their count.
        """
        uid = check.identifier(user_id, "user_id")
        page = check.limit(limit)
        per_session = check.limit(messages_limit, "messages_limit")
        agent = check.optional_identifier(agent_name, "agent_name")
        cursor = check.cursor(before)
        after_time = cursor.updated_at if cursor else None
        after_id = cursor.id if cursor else None
        if with_messages:
            args = (self._tenant, uid, after_time, after_id, page, agent, per_session)
            rows = await self._run("get_user_sessions", lambda c: c.fetch(self._q.user_sessions_with_messages, *args))
            return sessions_from_joined_rows(rows)
        rows = await self._run(
            "get_user_sessions",
            lambda c: c.fetch(self._q.user_sessions, self._tenant, uid, after_time, after_id, page, agent),
        )
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
    ) -> list[Message]:
        """Append *messages* atomically in one statement and return them as stored.

        The batch gets consecutive ``seq`` numbers after every message committed before it,
        and the session's ``updated_at`` (and sliding expiry) move in the same statement.
        Appending a batch whose ids are already stored (a retry) returns the stored rows and
        writes nothing; reusing an id for a different message raises :class:`DuplicateMessageId`.

        Without *user_id*, an unknown session raises :class:`SessionNotFound`. With it, the
        session is created on first write (owned by *user_id*, for *agent_name*) and a
        session owned by another user raises :class:`SessionOwnershipError`.
        """
        sid = check.identifier(session_id, "session_id")
        owner = agent = None
        if user_id is not None:
            owner, agent = check.identifier(user_id, "user_id"), check.identifier(agent_name, "agent_name")
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
            raise InvalidMessage("messages must be a sequence of NewMessage or mappings")
        rows = [check.message_row(m, i) for i, m in enumerate(messages)]
        if not rows:
            return []
        ids = [r[0] for r in rows]
        if len(set(ids)) != len(ids):
            raise InvalidMessage("message ids must be unique within a batch")
        supplied = any((m.id if isinstance(m, NewMessage) else m.get("id")) is not None for m in messages)
        request = AppendRequest(self._tenant, sid, rows, owner, agent, probe=supplied)
        deadline = self._runner.deadline()
        if self._coalesce:
            writer = self._runner.loop_local("appends", lambda: AppendWriter(self._appender))
            stored = await writer.submit(request, deadline)
        else:
            stored = await settle_despite_cancel(self._appender.one(request, deadline=deadline))
        if len(stored) != len(rows) or any(r["outcome"] == "c" for r in stored):
            raise DuplicateMessageId(
                f"session {sid!r} already holds different messages with some of these ids: "
                f"{sorted({r['id'] for r in stored})[:5]}"
            )
        by_id = {r["id"]: r for r in stored}
        result = []
        for row, original in zip(rows, messages, strict=True):
            rec = by_id[row[0]]
            if isinstance(original, NewMessage):
                role, content, tool_calls = original.role, original.content, original.tool_calls
                tool_call_id, raw = original.tool_call_id, original.raw
            else:
                role, content, tool_calls = original["role"], original["content"], original.get("tool_calls")
                tool_call_id, raw = original.get("tool_call_id"), original.get("raw")
            result.append(
                new_message(row[0], sid, rec["seq"], role, content, tool_calls, tool_call_id, raw, rec["created_at"])
            )
        result.sort(key=lambda m: m.seq)
        return result

    async def get_messages(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        before_seq: int | None = None,
        user_id: str | None = None,
    ) -> list[Message]:
        """Messages in chronological order: all of them, or the latest *limit*.

        *before_seq* pages backwards: pass the ``seq`` of the oldest message you hold to get
        the *limit* messages before it. An unknown session has no messages (``[]``). With
        *user_id*, a session owned by another user raises :class:`SessionOwnershipError`
        (checked in the same query).
        """
        sid = check.identifier(session_id, "session_id")
        n = check.limit(limit)
        below = check.limit(before_seq, "before_seq")
        uid = check.optional_identifier(user_id, "user_id")
        rows = await self._run(
            "get_messages", lambda c: c.fetch(self._q.read, self._tenant, sid, uid, below, n), session_id=sid
        )
        if uid is not None and rows and rows[0]["owner"] != uid:
            raise SessionOwnershipError(f"session {sid!r} belongs to another user")
        return messages_from_rows([r[1:] for r in rows], sid)

    async def _check_owner(self, sid: str, uid: str) -> None:
        owner = await self._run(
            "check owner", lambda c: c.fetchval(self._q.session_owner, self._tenant, sid), session_id=sid
        )
        if owner is not None and owner != uid:
            raise SessionOwnershipError(f"session {sid!r} belongs to another user")

    async def pop_message(self, session_id: str, *, user_id: str | None = None) -> Message | None:
        """Remove and return the newest message (``None`` if there is none).

        Atomic: concurrent pops each get a different message. Not retried after a failure
        that may have taken effect, since a retry could pop a second message. With
        *user_id*, another user's session raises :class:`SessionOwnershipError`.
        """
        sid = check.identifier(session_id, "session_id")
        uid = check.optional_identifier(user_id, "user_id")
        row = await self._write(
            "pop_message",
            lambda c: c.fetchrow(self._q.pop_message, self._tenant, sid, uid),
            session_id=sid,
            idempotent=False,
        )
        if row is None and uid is not None:
            await self._check_owner(sid, uid)
        return None if row is None else messages_from_rows([row], sid)[0]

    async def clear_session(self, session_id: str, *, user_id: str | None = None) -> int:
        """Delete every message of the session (the session stays); return how many.

        With *user_id*, another user's session raises :class:`SessionOwnershipError`.
        """
        sid = check.identifier(session_id, "session_id")
        uid = check.optional_identifier(user_id, "user_id")
        status = await self._write(
            "clear_session", lambda c: c.execute(self._q.clear_session, self._tenant, sid, uid), session_id=sid
        )
        if status == "DELETE 0" and uid is not None:
            await self._check_owner(sid, uid)
        return int(status.split()[-1])

    # -- retention ---------------------------------------------------------------------------

    async def _delete_in_batches(
        self,
        what: str,
        sql: str,
        args: tuple[Any, ...],
        on_batch: Callable[[int], None] | None,
    ) -> int:
        total = 0
        batch_size = args[-1]
        while True:
            rows = await self._write(what, lambda c: c.fetch(sql, *args))
            total += len(rows)
            if on_batch is not None and rows:
                on_batch(len(rows))
            # A short batch means nothing eligible is left but rows that live writers (or
            # another sweeper) hold; those are not idle, or will be deleted by their holder.
            if len(rows) < batch_size:
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

    async def delete_idle_sessions(
        self,
        older_than: timedelta | float | None = None,
        *,
        cutoff: datetime | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete sessions not updated for *older_than* (or since *cutoff*); return how many.

        The cutoff is fixed once, at the start, so a long cleanup never reaches sessions that
        were not idle long enough when it began. Works in batches of *batch_size*, each its
        own short transaction, skipping sessions that a live writer holds locked (they are
        not idle). *on_batch* is called with each batch's count (progress bars).
        """
        args = (
            self._tenant,
            await self._cutoff(older_than, cutoff),
            check.optional_identifier(user_id, "user_id"),
            check.optional_identifier(agent_name, "agent_name"),
            self._batch(batch_size),
        )
        return await self._delete_in_batches("delete_idle_sessions", self._q.delete_idle_batch, args, on_batch)

    async def count_idle_sessions(
        self,
        older_than: timedelta | float | None = None,
        *,
        cutoff: datetime | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
    ) -> int:
        """How many sessions :meth:`delete_idle_sessions` would delete now."""
        args = (
            self._tenant,
            await self._cutoff(older_than, cutoff),
            check.optional_identifier(user_id, "user_id"),
            check.optional_identifier(agent_name, "agent_name"),
        )
        count = await self._run("count_idle_sessions", lambda c: c.fetchval(self._q.count_idle, *args))
        return int(count)

    async def delete_expired_sessions(
        self, *, batch_size: int = 1000, on_batch: Callable[[int], None] | None = None
    ) -> int:
        """Delete sessions whose expiry has passed; safe to run from several processes at once."""
        args = (self._tenant, self._batch(batch_size))
        return await self._delete_in_batches("delete_expired_sessions", self._q.delete_expired_batch, args, on_batch)

    async def delete_user(
        self, user_id: str, *, batch_size: int = 500, on_batch: Callable[[int], None] | None = None
    ) -> ErasureReport:
        """Erase every session and message of *user_id* (right to erasure).

        Batched: each batch of sessions is deleted with its messages in one statement, so a
        failure never leaves a session without some of its messages; re-running finishes
        the job.
        """
        uid = check.identifier(user_id, "user_id")
        size = self._batch(batch_size)
        sessions = messages = 0
        while True:
            rows = await self._write(
                "delete_user", lambda c: c.fetch(self._q.delete_user_batch, self._tenant, uid, size)
            )
            if rows:
                sessions += len(rows)
                messages += int(rows[0]["messages"])
                if on_batch is not None:
                    on_batch(len(rows))
            if len(rows) < size:
                return ErasureReport(uid, sessions, messages)

    def start_sweeper(self, interval: float, *, batch_size: int = 1000) -> Sweeper:
        """Delete expired sessions every *interval* seconds in a background task of the
        running event loop.

        Returns the running :class:`~convostore.cleanup.Sweeper`; :meth:`stop_sweeper` (or
        :meth:`close`) stops it. Safe with other processes sweeping the same database.
        """
        from .cleanup import Sweeper

        if self._sweeper is None or not self._sweeper.running:
            self._sweeper = Sweeper(self, interval, batch_size=batch_size)
            self._sweeper.start()
        return self._sweeper

    async def stop_sweeper(self) -> None:
        """Stop the background sweeper, if one runs."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            await sweeper.stop()

    async def stats(self) -> StoreStats:
        """Counts, per-agent totals, table and index sizes, oldest and newest activity.

        Three statements; it scans both tables, so it is an operator's tool, not a hot path.
        """

        async def read(conn: Connection) -> StoreStats:
            totals = await conn.fetchrow(self._q.stats, self._tenant)
            agents = await conn.fetch(self._q.stats_by_agent, self._tenant)
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

        return await self._run("stats", read)

    @staticmethod
    def _batch(size: object) -> int:
        n = check.limit(size, "batch_size")
        if not n:
            raise InvalidInput("batch_size must be a positive int")
        return n
