"""``PostgresSessionStore``: sessions and their messages in PostgreSQL, on an asyncpg pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from . import _validate as check
from ._coalesce import AppendWriter
from ._rows import messages_from_rows, session_from_row, sessions_from_joined_rows
from ._sql import Queries, render
from ._types import Connection
from .errors import (
    ConvostoreError,
    DatabaseError,
    DuplicateMessageId,
    InvalidInput,
    InvalidMessage,
    SessionNotFound,
    SessionOwnershipError,
    StoreClosed,
    StoreTimeout,
    StoreUnavailable,
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
from .retry import RetryPolicy, is_transient, surely_not_applied

if TYPE_CHECKING:
    from .cleanup import Sweeper

logger = logging.getLogger("convostore")

T = TypeVar("T")
Record = asyncpg.Record


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What :meth:`PostgresSessionStore.delete_user` removed."""

    user_id: str
    sessions: int
    messages: int


def redact(url: str) -> str:
    """*url* with its password replaced by ``***`` (for logs and error messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class _AcquireFailed(Exception):
    """Internal: no connection could be had, so nothing was sent (always safe to retry)."""


def _translate(exc: BaseException, what: str) -> ConvostoreError:
    """Map a driver error to our hierarchy (the caller raises it ``from exc``)."""
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return SessionNotFound(f"{what}: the session does not exist")
    if isinstance(exc, asyncpg.UniqueViolationError):
        return DuplicateMessageId(f"{what}: {exc}")
    if isinstance(exc, asyncpg.CheckViolationError):
        return InvalidInput(f"{what}: rejected by the schema ({exc.constraint_name})")
    if isinstance(exc, asyncpg.DataError):  # class 22: too long, bad encoding, bad escape...
        return InvalidInput(f"{what}: {exc}")
    if isinstance(exc, (asyncpg.QueryCanceledError, asyncio.TimeoutError)):
        return StoreTimeout(f"{what}: timed out")
    if is_transient(exc) or isinstance(exc, _AcquireFailed):
        return StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    return DatabaseError(f"{what}: {type(exc).__name__}: {exc}")


async def _keep_session_state(conn: Connection) -> None:
    """Pool ``reset`` hook. asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` on every release: a second round trip per call. convostore never
    sets session state (its advisory locks are transaction-scoped), and asyncpg still rolls
    back an open transaction before calling this hook, so there is nothing to reset."""


def _connection_failed(exc: BaseException) -> bool:
    """A transient failure of the connection or server. A statement that ran past
    ``command_timeout`` is not one: the caller's deadline passed, so it is not retried."""
    return is_transient(exc) and not isinstance(exc, asyncio.TimeoutError)


_RETRYABLE = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    asyncio.TimeoutError,
    _AcquireFailed,
)


class PostgresSessionStore:
    """Agent sessions and their messages in PostgreSQL.

    Construction does no I/O; :meth:`connect` (or ``async with``) opens the pool and applies
    pending migrations. The URL is *database_url*, else ``$DATABASE_URL``, else an embedded
    PostgreSQL started on demand (see :mod:`convostore.embedded`).

    Every method is one round trip unless its docstring says otherwise, raises only
    :class:`~convostore.errors.ConvostoreError` subclasses, and retries transient failures
    according to *retry* (writes are idempotent, so a retry never stores twice).

    Options (durations are float seconds):

    * ``schema``: where the tables live (default ``$CONVOSTORE_SCHEMA`` or ``public``).
    * ``min_size`` / ``max_size``: pool bounds.
    * ``command_timeout``: per-statement deadline; ``acquire_timeout``: wait for a pooled
      connection; both raise or retry as described in the README's Reliability section.
    * ``pgbouncer=True``: no server-side prepared statement cache (transaction pooling).
    * ``apply_migrations=False``: do not migrate in ``connect()`` (run ``convostore migrate``).
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
        apply_migrations: bool = True,
        command_timeout: float | None = 30.0,
        acquire_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        pgbouncer: bool = False,
        coalesce_appends: bool = True,
        max_inactive_connection_lifetime: float = 300.0,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self._url = database_url
        self._schema = schema or os.environ.get("CONVOSTORE_SCHEMA") or "public"
        self._q: Queries = render(self._schema)  # validates the schema name now
        self._min_size = min_size
        self._max_size = max_size
        self._apply_migrations = apply_migrations
        self._command_timeout = command_timeout
        self._acquire_timeout = acquire_timeout
        self._retry = retry or RetryPolicy.from_env()
        self._pgbouncer = pgbouncer
        self._max_inactive = max_inactive_connection_lifetime
        self._connect_kwargs = dict(connect_kwargs or {})
        self._pool: asyncpg.Pool | None = None
        self._sweeper: Sweeper | None = None
        self._coalesce = coalesce_appends
        self._writer: AppendWriter | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the tables."""
        return self._schema

    @property
    def database_url(self) -> str | None:
        """The URL in use once connected (``None`` before ``connect()`` resolves it)."""
        return self._url

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool (raises :class:`StoreClosed` when not connected)."""
        if self._pool is None:
            raise StoreClosed("the store is not connected: call connect() or use 'async with'")
        return self._pool

    async def connect(self) -> Self:
        """Open the pool (starting the embedded server if no URL is configured) and migrate."""
        if self._pool is not None:
            return self
        if self._url is None:
            self._url = os.environ.get("DATABASE_URL") or None
        if self._url is None:
            from .embedded import embedded_url

            self._url = await asyncio.to_thread(embedded_url)
        url = self._url
        attempt = 0
        while True:
            attempt += 1
            try:
                self._pool = await asyncpg.create_pool(
                    url,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    command_timeout=self._command_timeout,
                    statement_cache_size=0 if self._pgbouncer else 1024,
                    max_inactive_connection_lifetime=self._max_inactive,
                    reset=_keep_session_state,
                    **self._connect_kwargs,
                )
                break
            except Exception as exc:
                if not is_transient(exc) or attempt >= self._retry.attempts:
                    raise StoreUnavailable(f"cannot connect to {redact(url)}: {exc}") from exc
                delay = self._retry.backoff(attempt)
                logger.warning("connect to %s failed (%s); retry %d in %.2fs", redact(url), exc, attempt, delay)
                await asyncio.sleep(delay)
        if self._coalesce:
            self._writer = AppendWriter(self, self._append_statement)
        logger.debug("connected to %s (schema %s)", redact(url), self._schema)
        if self._apply_migrations:
            try:
                await self.migrate()
            except BaseException:
                await self.close()
                raise
        return self

    async def close(self) -> None:
        """Stop the sweeper, if any, and close the pool (waits for connections in use)."""
        await self.stop_sweeper()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.drain()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

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

    # -- the one place that talks to the pool ------------------------------------------------

    async def _run(
        self,
        what: str,
        fn: Callable[[Connection], Awaitable[T]],
        *,
        session_id: str | None = None,
        idempotent: bool = True,
    ) -> T:
        """Run *fn* on a pooled connection, retrying transient failures.

        A non-idempotent *fn* (``pop_message``) is retried only when the failure proves it
        had no effect: no connection was acquired, or the server rolled it back.
        """
        pool = self.pool
        policy = self._retry
        loop = asyncio.get_running_loop()
        give_up_at = None if policy.deadline is None else loop.time() + policy.deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    # asyncio.timeout arms one timer; acquire(timeout=) would add a task per call.
                    async with asyncio.timeout(self._acquire_timeout):
                        conn = await pool.acquire()
                except _RETRYABLE as exc:
                    raise _AcquireFailed(f"{type(exc).__name__}: {exc}") from exc
                try:
                    return await fn(conn)
                except _RETRYABLE as exc:
                    if _connection_failed(exc):
                        # The connection, not the statement, failed: it may be dead or stuck
                        # mid-protocol. Terminate it so that the pool replaces it instead of
                        # handing it out again (the no-op reset hook would not notice). If
                        # asyncpg already released it on connection loss, it is gone anyway.
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.terminate()
                    raise
                finally:
                    # asyncpg shields release itself, so a cancelled caller cannot leak it.
                    await pool.release(conn)
            except ConvostoreError:
                # Ours, raised on purpose inside fn (some derive from OSError): never retried.
                raise
            except _RETRYABLE as exc:
                retryable = isinstance(exc, _AcquireFailed) or (
                    _connection_failed(exc) and (idempotent or surely_not_applied(exc))
                )
                out_of_time = give_up_at is not None and loop.time() >= give_up_at
                if not retryable or attempt >= policy.attempts or out_of_time:
                    if retryable:
                        logger.error(
                            "%s failed after %d attempts (session %s): %s: %s",
                            what,
                            attempt,
                            session_id,
                            type(exc).__name__,
                            exc,
                        )
                    raise _translate(exc, what) from exc
                delay = policy.backoff(attempt)
                if give_up_at is not None:
                    delay = max(0.0, min(delay, give_up_at - loop.time()))
                logger.warning(
                    "%s: transient %s (session %s); retry %d in %.3fs",
                    what,
                    type(exc).__name__,
                    session_id,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)

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
        fixed one. Expired sessions are removed by :meth:`delete_expired_sessions`.
        """
        sid = check.identifier(session_id, "session_id") if session_id is not None else str(uuid.uuid4())
        args = (
            sid,
            check.identifier(user_id, "user_id"),
            check.identifier(agent_name, "agent_name"),
            check.metadata(metadata),
            check.duration(ttl, "ttl"),
            check.duration(expires_in, "expires_in"),
        )
        row = await self._run("create_session", lambda c: c.fetchrow(self._q.create_session, *args), session_id=sid)
        assert row is not None
        return session_from_row(row)

    async def get_session(self, session_id: str) -> Session | None:
        """The session with all its messages in order, or ``None`` if it does not exist."""
        sid = check.identifier(session_id, "session_id")
        rows = await self._run("get_session", lambda c: c.fetch(self._q.get_session, sid), session_id=sid)
        found = sessions_from_joined_rows(rows)
        return found[0] if found else None

    async def update_metadata(self, session_id: str, patch: Mapping[str, Any]) -> Session:
        """Merge *patch* into the session's metadata (top-level keys; JSONB ``||``)."""
        sid = check.identifier(session_id, "session_id")
        data = check.metadata(patch)
        row = await self._run(
            "update_metadata", lambda c: c.fetchrow(self._q.update_metadata, sid, data), session_id=sid
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
        row = await self._run(
            "set_expiry", lambda c: c.fetchrow(self._q.set_expiry, sid, sliding, clear, fixed), session_id=sid
        )
        if row is None:
            raise SessionNotFound(f"session {sid!r} does not exist")
        return session_from_row(row)

    async def delete_session(self, session_id: str) -> bool:
        """Delete the session and its messages; ``False`` if it did not exist."""
        sid = check.identifier(session_id, "session_id")
        status = await self._run("delete_session", lambda c: c.execute(self._q.delete_session, sid), session_id=sid)
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
        cursor = before.cursor if isinstance(before, Session) else before
        after_time = cursor.updated_at if cursor else None
        after_id = cursor.id if cursor else None
        if with_messages:
            args = (uid, after_time, after_id, page, agent, per_session)
            rows = await self._run("get_user_sessions", lambda c: c.fetch(self._q.user_sessions_with_messages, *args))
            return sessions_from_joined_rows(rows)
        rows = await self._run(
            "get_user_sessions",
            lambda c: c.fetch(self._q.user_sessions, uid, after_time, after_id, page, agent),
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
        writes nothing.

        Without *user_id*, an unknown session raises :class:`SessionNotFound`. With it, the
        session is created on first write (owned by *user_id*, for *agent_name*) and a
        session owned by another user raises :class:`SessionOwnershipError`.
        """
        sid = check.identifier(session_id, "session_id")
        create_as = None
        if user_id is not None:
            create_as = (check.identifier(user_id, "user_id"), check.identifier(agent_name, "agent_name"))
        return await self._append(sid, messages, create_as)

    async def _append(
        self,
        sid: str,
        messages: Sequence[NewMessage | Mapping[str, Any]],
        create_as: tuple[str, str] | None,
    ) -> list[Message]:
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
            raise InvalidMessage("messages must be a sequence of NewMessage or mappings")
        rows = [check.message_row(m, i) for i, m in enumerate(messages)]
        if not rows:
            return []
        ids = [r[0] for r in rows]
        if len(set(ids)) != len(ids):
            raise InvalidMessage("message ids must be unique within a batch")
        if self._writer is not None:
            stored = await self._writer.submit(sid, rows, create_as)
        else:
            stored = await self._append_statement(sid, rows, create_as)
        if len(stored) != len(rows) or any(r["conflict"] for r in stored):
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

    async def _append_statement(self, sid: str, rows: list[check.Row], create_as: tuple[str, str] | None) -> list[Any]:
        """One session's batch in one statement (the coalescer's path for a lone request)."""
        columns = [list(col) for col in zip(*rows, strict=True)]
        if create_as is None:
            sql, args = self._q.append, (sid, *columns)
        else:
            sql, args = self._q.append_or_create, (sid, *columns, *create_as)
        ids = columns[0]

        async def append(conn: Connection) -> list[Record]:
            try:
                stored = await conn.fetch(sql, *args)
            except asyncpg.UniqueViolationError:
                # Rolled back whole. Either an identical batch committed just before us (run
                # again: it now reads as a replay) or an id is reused (raises again: ours).
                stored = await conn.fetch(sql, *args)
            if not stored:
                # Nothing inserted and nothing found: unknown session, another owner, or an
                # identical batch racing us (rare: then it is stored, so read it back).
                owner = await conn.fetchval(self._q.session_owner, sid)
                if owner is None:
                    raise SessionNotFound(f"session {sid!r} does not exist")
                if create_as is not None and owner != create_as[0]:
                    raise SessionOwnershipError(f"session {sid!r} belongs to another user")
                stored = await conn.fetch(self._q.messages_by_id, sid, ids)
            return stored

        return await self._run("add_messages", append, session_id=sid)

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
        if user_id is not None:
            rows = await self._owned_rows(sid, n, below, check.identifier(user_id, "user_id"))
            return messages_from_rows(rows, sid)
        if n is None:
            rows = await self._run(
                "get_messages", lambda c: c.fetch(self._q.get_all_messages, sid, below), session_id=sid
            )
        else:
            rows = await self._run(
                "get_messages", lambda c: c.fetch(self._q.get_latest_messages, sid, below, n), session_id=sid
            )
        return messages_from_rows(rows, sid)

    async def _owned_rows(self, sid: str, limit: int | None, below: int | None, uid: str) -> list[Any]:
        """Message rows (``_MESSAGE_COLUMNS`` shape) of *uid*'s session, one query; raises
        :class:`SessionOwnershipError` for another user's session. Shared with the SDK
        adapter, which decodes ``raw`` itself instead of building Messages."""
        rows = await self._run(
            "get_messages",
            lambda c: c.fetch(self._q.get_owned_messages, sid, below, limit, uid),
            session_id=sid,
        )
        if rows and rows[0]["owner"] != uid:
            raise SessionOwnershipError(f"session {sid!r} belongs to another user")
        return [r[1:] for r in rows if r["id"] is not None]

    async def _check_owner(self, sid: str, uid: str) -> None:
        owner = await self._run("check owner", lambda c: c.fetchval(self._q.session_owner, sid), session_id=sid)
        if owner is not None and owner != uid:
            raise SessionOwnershipError(f"session {sid!r} belongs to another user")

    async def pop_message(self, session_id: str, *, user_id: str | None = None) -> Message | None:
        """Remove and return the newest message (``None`` if there is none).

        Atomic: concurrent pops each get a different message. Not retried after a failure
        that may have taken effect, since a retry could pop a second message. With
        *user_id*, another user's session raises :class:`SessionOwnershipError`.
        """
        sid = check.identifier(session_id, "session_id")
        if user_id is None:
            row = await self._run(
                "pop_message", lambda c: c.fetchrow(self._q.pop_message, sid), session_id=sid, idempotent=False
            )
        else:
            uid = check.identifier(user_id, "user_id")
            row = await self._run(
                "pop_message",
                lambda c: c.fetchrow(self._q.pop_owned_message, sid, uid),
                session_id=sid,
                idempotent=False,
            )
            if row is None:
                await self._check_owner(sid, uid)
        return None if row is None else messages_from_rows([row], sid)[0]

    async def clear_session(self, session_id: str, *, user_id: str | None = None) -> int:
        """Delete every message of the session (the session stays); return how many.

        With *user_id*, another user's session raises :class:`SessionOwnershipError`.
        """
        sid = check.identifier(session_id, "session_id")
        if user_id is None:
            status = await self._run("clear_session", lambda c: c.execute(self._q.clear_session, sid), session_id=sid)
        else:
            uid = check.identifier(user_id, "user_id")
            status = await self._run(
                "clear_session", lambda c: c.execute(self._q.clear_owned_session, sid, uid), session_id=sid
            )
            if status == "DELETE 0":
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
            rows = await self._run(what, lambda c: c.fetch(sql, *args))
            total += len(rows)
            if on_batch is not None and rows:
                on_batch(len(rows))
            # A short batch means nothing eligible is left but rows that live writers (or
            # another sweeper) hold; those are not idle, or will be deleted by their holder.
            if len(rows) < batch_size:
                return total

    async def delete_idle_sessions(
        self,
        older_than: timedelta | float,
        *,
        user_id: str | None = None,
        agent_name: str | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete sessions not updated for *older_than*; return how many were deleted.

        Works in batches of *batch_size*, each its own short transaction, skipping sessions
        that a live writer holds locked (they are not idle). *on_batch* is called with each
        batch's count (progress bars).
        """
        age = check.duration(older_than, "older_than")
        args = (
            age,
            check.optional_identifier(user_id, "user_id"),
            check.optional_identifier(agent_name, "agent_name"),
            self._batch(batch_size),
        )
        return await self._delete_in_batches("delete_idle_sessions", self._q.delete_idle_batch, args, on_batch)

    async def count_idle_sessions(
        self, older_than: timedelta | float, *, user_id: str | None = None, agent_name: str | None = None
    ) -> int:
        """How many sessions :meth:`delete_idle_sessions` would delete now."""
        args = (
            check.duration(older_than, "older_than"),
            check.optional_identifier(user_id, "user_id"),
            check.optional_identifier(agent_name, "agent_name"),
        )
        count = await self._run("count_idle_sessions", lambda c: c.fetchval(self._q.count_idle, *args))
        return int(count)

    async def delete_expired_sessions(
        self, *, batch_size: int = 1000, on_batch: Callable[[int], None] | None = None
    ) -> int:
        """Delete sessions whose expiry has passed; safe to run from several processes at once."""
        args = (self._batch(batch_size),)
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
            rows = await self._run(
                "delete_user", lambda c: c.fetch(self._q.delete_user_batch, uid, size), session_id=None
            )
            if rows:
                sessions += len(rows)
                messages += int(rows[0]["messages"])
                if on_batch is not None:
                    on_batch(len(rows))
            if len(rows) < size:
                return ErasureReport(uid, sessions, messages)

    def start_sweeper(self, interval: float, *, batch_size: int = 1000) -> Sweeper:
        """Delete expired sessions every *interval* seconds in a background task.

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
            totals = await conn.fetchrow(self._q.stats)
            agents = await conn.fetch(self._q.stats_by_agent)
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
