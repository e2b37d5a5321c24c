"""The one place where statements run: connection pools, attempts within a deadline, errors.

Everything that talks to PostgreSQL goes through a :class:`Runner`: the store, the append
coalescer, export and import, the framework adapters. It owns

* **the pools, one per event loop**, created on first use in that loop. asyncpg connections
  belong to the loop that opened them, so a store shared by ``Runner.run_sync`` calls or by
  worker threads gets a pool in each loop instead of failing (or worse, committing a write on
  a connection another loop is using). A pool closes when its loop shuts down.
* **attempts** (:meth:`Runner.run`): each attempt gets what is left of the call's deadline
  for its pool, its connection and its statement, never the full timeouts again (psycopg_pool's
  ``AttemptWithBackoff`` is the model), so no call outlives its deadline.
* **the classification of driver errors**, once, on asyncpg's exception classes, and their
  translation into convostore's hierarchy with the cause kept and passwords scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from . import _telemetry as telemetry
from ._failures import Failure, classify, describe, is_closed, redact, secrets_of, translate
from ._routing import REFRESH, Node, ShardMap
from ._sql import SHARD_MAP
from ._types import Connection
from .errors import ConvostoreError, StoreClosed, StoreTimeout, StoreUnavailable
from .retry import RetryPolicy

logger = logging.getLogger("convostore")

T = TypeVar("T")


class _Attempt(Exception):
    """Internal: an attempt failed with *failure*; ``__cause__`` is the driver error."""

    def __init__(self, failure: Failure, conn: Connection | None) -> None:
        super().__init__(failure.value)
        self.failure = failure
        self.conn = conn


async def _keep_session_state(conn: Connection) -> None:
    """Pool ``reset`` hook. asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` on every release: a second round trip per call. convostore's only
    session state is the settings made once per connection on Citus (``_CITUS_SESSION``);
    its advisory locks and other settings are transaction-scoped, and asyncpg still rolls back
    an open transaction before calling this hook, so there is nothing to reset."""


# On a Citus node, catalog queries get a filter that hides shards, costly per row: asyncpg's
# type introspection (once per connection, for the array parameters of the append) then takes
# 0.5-1.5 s instead of 10 ms. convostore's statements never list the catalog, so its sessions
# see shards as they are. On a node that holds shards itself (a single-node cluster, or a
# connection straight to a worker), statements are planned with each call's values: there
# Citus adds a copy of a reused generic plan's local plan to it on every run (see
# _sql.FIT_TO_CITUS), about 46 KB per read of a session row measured on 13.2.2. Elsewhere
# the block sets nothing.
_CITUS_SESSION = """
DO $citus$
BEGIN
    IF current_setting('citus.version', true) IS NULL OR to_regclass('pg_catalog.pg_dist_placement') IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('citus.show_shards_for_app_name_prefixes', '*', false);
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement
                WHERE groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)) THEN
        PERFORM set_config('plan_cache_mode', 'force_custom_plan', false);
    END IF;
END
$citus$
"""


def _connection_init(user_init: Any, *, citus: bool) -> Any:
    """The pool's ``init`` hook, run once on each new connection: the Citus settings (not
    through pgbouncer, whose server connections are shared: there it would not stay with the
    session), then the caller's own ``init`` from ``connect_kwargs``, if any."""
    if not citus:
        return user_init

    async def init(conn: Connection) -> None:
        await conn.execute(_CITUS_SESSION)
        if user_init is not None:
            await user_init(conn)

    return init


async def settle_despite_cancel(awaitable: Awaitable[T]) -> T:
    """Await *awaitable* to its end even if the caller is cancelled meanwhile, then re-raise
    the cancellation: a cancelled caller never returns before its own write is settled, so
    its next write cannot overtake it (the Agents SDK's ``_await_mutation``)."""
    task = asyncio.ensure_future(awaitable)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the caller asked to be cancelled and is told so
        raise cancelled
    return task.result()


@dataclass
class _LoopState:
    """What a runner keeps per event loop."""

    opening: asyncio.Future[asyncpg.Pool] | None = None
    pool: asyncpg.Pool | None = None
    locals: dict[str, Any] = field(default_factory=dict)
    # Pools straight to the nodes holding sessions (``route_to_nodes``), opened on first use,
    # and the nodes whose calls go through the main pool for now (until a monotonic time).
    nodes: dict[Node, asyncpg.Pool] = field(default_factory=dict)
    shunned: dict[Node, float] = field(default_factory=dict)
    refreshing: asyncio.Task[None] | None = None
    # An async generator the loop closes in shutdown_asyncgens(): our hook to close the pool
    # while the loop still runs (asyncio.run() calls it before closing the loop).
    closer: Any = None


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """How pools are built (durations in seconds)."""

    min_size: int = 1
    max_size: int = 10
    command_timeout: float | None = 30.0
    acquire_timeout: float = 10.0
    connect_timeout: float = 10.0
    max_inactive_connection_lifetime: float = 300.0
    pgbouncer: bool = False
    route_to_nodes: bool = False
    connect_kwargs: Mapping[str, Any] = field(default_factory=dict)


class Runner:
    """Runs functions of a connection against one database (see the module docstring).

    *url* is resolved on first use: the given URL, else ``$DATABASE_URL``, else the embedded
    PostgreSQL (started in a thread). Thread-safe: each thread's event loop gets its own pool.
    *prepare* runs on each new pool before any call may use it (the store migrates there).
    """

    def __init__(
        self,
        url: str | None,
        options: PoolOptions,
        retry: RetryPolicy,
        *,
        prepare: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        self._url = url
        self._prepare = prepare
        # Whether the connecting role is subject to row-level security (set by the store when a
        # pool opens): then every statement that is not one of the scope-setting functions runs
        # in a transaction that first sets its scope.
        self.row_security = False
        # Whether the tables are distributed (Citus): set by the store when a pool opens.
        self.distributed = False
        # The sessions table whose shards' map is read (on distributed tables; set by the store
        # when a pool opens), and its map, shared by every loop: appends of one node's sessions
        # share a call, and with ``route_to_nodes`` calls go straight to that node.
        self.route_table: str | None = None
        self._routes: ShardMap | None = None
        self._routes_read = 0.0
        self._routes_database: str | None = None
        self.options = options
        self.retry = retry
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._closed = False
        self._secrets: list[str] = secrets_of(url) if url else []

    # -- configuration -------------------------------------------------------------------------

    @property
    def url(self) -> str | None:
        """The database URL once resolved (``None`` before first use, if none was given)."""
        return self._url

    def scrub(self, text: str) -> str:
        """*text* with this runner's passwords replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def resolve_url(self) -> str:
        """The URL to connect to (may start the embedded PostgreSQL, in a thread)."""
        if self._url is None:
            import os

            url = os.environ.get("DATABASE_URL") or None
            if url is None:
                from .embedded import embedded_url

                url = await asyncio.to_thread(embedded_url)
            self._secrets = secrets_of(url)
            self._url = url
        return self._url

    # -- lifecycle -----------------------------------------------------------------------------

    def reopen(self) -> None:
        """Allow use again after :meth:`close` (``connect()`` after ``close()``)."""
        self._closed = False

    def _state(self) -> _LoopState:
        if self._closed:
            raise StoreClosed("the store is closed: call connect() to use it again")
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
                self._forget_dead_loops()
                state = self._loops[loop] = _LoopState()
        return state

    def _forget_dead_loops(self) -> None:
        """Drop the pools of loops that closed without shutting their async generators down
        (the caller holds ``_lock``). Their connections cannot be closed politely any more."""
        for loop in [loop for loop in self._loops if loop.is_closed()]:
            state = self._loops.pop(loop)
            for pool in (state.pool, *state.nodes.values()):
                if pool is not None:
                    with contextlib.suppress(Exception):
                        pool.terminate()

    def loop_local(self, key: str, factory: Callable[[], T]) -> T:
        """A per-event-loop object (e.g. the append coalescer), made by *factory* on first use."""
        state = self._state()
        value = state.locals.get(key)
        if value is None:
            value = state.locals[key] = factory()
        return cast(T, value)

    def find_local(self, key: str) -> Any:
        """The per-event-loop object *key* of the running loop, or ``None`` if there is none."""
        with self._lock:
            state = self._loops.get(asyncio.get_running_loop())
        return None if state is None else state.locals.get(key)

    def current_pool(self) -> asyncpg.Pool | None:
        """This loop's pool, if it is open."""
        with self._lock:
            try:
                state = self._loops.get(asyncio.get_running_loop())
            except RuntimeError:
                return None
        return None if state is None else state.pool

    async def pool(self, budget: float | None = None) -> asyncpg.Pool:
        """This loop's pool, opened on first use within *budget* seconds. Concurrent first
        callers share one opening (never two pools for one loop)."""
        state = self._state()
        if state.pool is not None:
            return state.pool
        if state.opening is None:
            state.opening = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._open(state, budget))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        return await asyncio.shield(state.opening)

    async def _open(self, state: _LoopState, budget: float | None) -> None:
        assert state.opening is not None
        opening = state.opening
        pool = None
        try:
            url = await self.resolve_url()
            o = self.options
            pool = self._create_pool(url, budget)
            async with asyncio.timeout(o.connect_timeout if budget is None else min(o.connect_timeout, budget)):
                await pool
            if self._prepare is not None:
                async with asyncio.timeout(budget), pool.acquire() as conn:
                    await self._prepared(conn)
            if self.route_table is not None:
                async with asyncio.timeout(budget), pool.acquire() as conn:
                    await self._read_routes(conn)
        except BaseException as exc:
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.terminate()
            state.opening = None
            opening.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        state.pool = pool
        state.closer = self._closer(pool)
        with contextlib.suppress(StopAsyncIteration):
            await state.closer.__anext__()
        logger.debug("connected to %s", redact(self._url or ""))
        opening.set_result(pool)

    async def _prepared(self, conn: Connection) -> None:
        """Run *prepare* (migrating, for the store) on a new pool's first connection. Its
        failures are classified like a call's: preparing is safe to repeat (each migration
        runs in its own transaction and is skipped once recorded), so a lost connection or a
        rolled-back transaction is retried by the call that opened the pool, within its
        deadline (raised as :class:`_Attempt`)."""
        assert self._prepare is not None
        try:
            await self._prepare(conn)
            if self.options.pgbouncer and self.statement_timeout() is not None:
                await self._check_server_bound(conn)
        except ConvostoreError:
            raise
        except Exception as exc:
            raise self._failed(exc, conn) from exc

    async def _check_server_bound(self, conn: Connection) -> None:
        """Through pgbouncer no session setting holds, so the server bounds a statement only if
        its role or database does (``ALTER ROLE ... SET statement_timeout``): say so if not."""
        if await conn.fetchval("SHOW statement_timeout") in ("0", None):
            logger.warning(
                "the server has no statement_timeout for this role: a statement whose caller "
                "gave up (and whose cancel is lost) may still commit; through pgbouncer, set "
                "it on the role or the database (ALTER ROLE ... SET statement_timeout = '%ss')",
                self.statement_timeout(),
            )

    def _create_pool(self, url: str, budget: float | None, **overrides: Any) -> asyncpg.Pool:
        """An asyncpg pool (not yet initialised) built from the options; *overrides* replace
        some of its arguments (a node's host and port)."""
        o = self.options
        kwargs = dict(o.connect_kwargs)
        init = _connection_init(kwargs.pop("init", None), citus=not o.pgbouncer)
        bound = self.statement_timeout()
        if bound is not None and not o.pgbouncer:
            # The server stops a statement its client gave up on by itself, even when the
            # client's cancel request is lost on the way: else a statement waiting on a lock
            # commits once the lock frees, after its caller was told it failed. Given in the
            # startup packet, so no statement is spent on it. Not through pgbouncer, which
            # refuses startup parameters it does not know (there each scoped transaction sets
            # its own, see _attempt_cap). The caller's own server_settings take precedence.
            settings = dict(kwargs.get("server_settings") or {})
            settings.setdefault("statement_timeout", str(_milliseconds(bound)))
            kwargs["server_settings"] = settings
        kwargs.update(
            min_size=o.min_size,
            max_size=o.max_size,
            command_timeout=o.command_timeout,
            statement_cache_size=0 if o.pgbouncer else 1024,
            max_inactive_connection_lifetime=o.max_inactive_connection_lifetime,
            reset=_keep_session_state,
            init=init,
            timeout=o.connect_timeout if budget is None else min(o.connect_timeout, budget),
        )
        kwargs.update(overrides)
        return asyncpg.create_pool(url, **kwargs)

    async def _closer(self, pool: asyncpg.Pool) -> AsyncIterator[None]:
        try:
            yield
        finally:
            # Reached from loop.shutdown_asyncgens(): the end of asyncio.run(), or of each
            # Runner.run_sync() call, which keeps its loop open; the next call there reopens.
            nodes: list[asyncpg.Pool] = []
            with self._lock:
                for state in self._loops.values():
                    if state.pool is pool:
                        state.pool, state.opening, state.closer = None, None, None
                        nodes, state.nodes = list(state.nodes.values()), {}
            await _close_pool(pool)
            for node in nodes:
                await _close_pool(node)

    # -- routing (see convostore._routing) -----------------------------------------------------

    @property
    def routes(self) -> ShardMap | None:
        """The shard map of the distributed tables (``None``: not distributed, or not read)."""
        return self._routes

    def node_of(self, session_id: str) -> Node | None:
        """The node holding *session_id* by the shard map (read again when it is older than
        :data:`REFRESH` seconds); ``None`` for the main pool's node, or without a map."""
        routes = self._routes
        if routes is None:
            return None
        self._refresh_if_stale()
        return routes.node_for(session_id)

    def _refresh_if_stale(self) -> None:
        now = time.monotonic()
        if self.route_table is None or now - self._routes_read <= REFRESH:
            return
        state = self._state()
        if state.pool is not None and (state.refreshing is None or state.refreshing.done()):
            self._routes_read = now
            state.refreshing = asyncio.ensure_future(self._refresh_routes(state.pool))

    def node_pools(self) -> dict[Node, asyncpg.Pool]:
        """This loop's pools to the nodes calls were routed to."""
        return dict(self._state().nodes)

    def shunned(self, node: Node) -> bool:
        """Whether *node*'s calls go through the main pool for now (it failed one)."""
        return self._state().shunned.get(node, 0.0) > time.monotonic()

    async def _read_routes(self, conn: Connection) -> None:
        rows = await conn.fetch(SHARD_MAP, self.route_table)
        self._routes_database = rows[0]["database"] if rows else None
        self._routes = ShardMap.from_rows(
            [(r["low"], r["high"], None if r["here"] else (r["host"], r["port"])) for r in rows]
        )
        self._routes_read = time.monotonic()

    async def _refresh_routes(self, pool: asyncpg.Pool) -> None:
        try:
            async with pool.acquire() as conn:
                await self._read_routes(conn)
        except Exception as exc:  # the map in use stays (a stale map only slows calls down)
            logger.debug("reading the shard map failed: %s", self.scrub(describe(exc)))

    async def _node_pool(self, session_id: str, budget: float | None) -> tuple[Node | None, asyncpg.Pool | None]:
        """The node holding *session_id* and this loop's pool to it, if calls are routed and
        that node is not shunned; else ``(None, None)`` (the main pool serves the call)."""
        state = self._state()
        if self._routes is None or state.pool is None or not self.options.route_to_nodes:
            return None, None  # the main pool opens first (and reads the map)
        node = self.node_of(session_id)
        if node is None or state.shunned.get(node, 0.0) > time.monotonic():
            return None, None
        pool = state.nodes.get(node)
        if pool is None:
            try:
                # No connection is made until a call needs one (min_size 0): opening is immediate.
                where = {"host": node[0], "port": node[1], "database": self._routes_database}
                pool = self._create_pool(await self.resolve_url(), budget, min_size=0, **where)
                await pool
            except Exception as exc:
                self._shun(node, exc)
                return None, None
            pool = state.nodes.setdefault(node, pool)
        return node, pool

    def _shun(self, node: Node, exc: BaseException) -> None:
        """Send *node*'s calls through the main pool for a while: it failed to serve one (could
        not be reached, lost the connection, or had no free connection in time)."""
        state = self._state()
        state.shunned[node] = time.monotonic() + _SHUN
        logger.info(
            "%s:%s: %s; its sessions' calls go through %s for %.0fs",
            *node,
            self.scrub(describe(exc)),
            redact(self._url or ""),
            _SHUN,
        )

    async def close(self) -> None:
        """Close every pool: this loop's politely, other live loops' from their own thread,
        closed loops' by dropping their connections. Calls made afterwards raise
        :class:`StoreClosed` until the store is opened again."""
        self._closed = True
        with self._lock:
            states = list(self._loops.items())
            self._loops.clear()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, state in states:
            pools = [p for p in (state.pool, *state.nodes.values()) if p is not None]
            state.pool, state.nodes = None, {}
            for pool in pools:
                if loop is current:
                    await _close_pool(pool)
                elif not loop.is_closed() and loop.is_running():
                    future = asyncio.run_coroutine_threadsafe(_close_pool(pool), loop)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.wrap_future(future), 10)
                else:
                    with contextlib.suppress(Exception):
                        pool.terminate()

    # -- running -------------------------------------------------------------------------------

    def statement_timeout(self) -> float | None:
        """Seconds the server lets one statement run (``None``: no bound): the command
        timeout, or the call's deadline when that is shorter, since no attempt has more."""
        bounds = [t for t in (self.options.command_timeout, self.retry.deadline) if t is not None]
        return min(bounds) if bounds else None

    def _attempt_cap(self, budget: float | None) -> float | None:
        """The statement timeout a scoped transaction sets for itself (``None``: the session's
        holds). Through pgbouncer always, since no session setting survives there; elsewhere
        when the attempt has so much less than the session's bound left (a retry late in the
        call) that the server would outlast the wait for its confirmation of a cancel. It
        rides on the scope's own ``BEGIN``: no extra round trip."""
        bound = self.statement_timeout()
        if self.options.pgbouncer:
            return _within(bound, budget)
        if budget is not None and bound is not None and budget + _CANCEL_WAIT < bound:
            return budget
        return None

    def deadline(self) -> float | None:
        """The loop time by which a call starting now must end (``None``: no deadline)."""
        if self.retry.deadline is None:
            return None
        return asyncio.get_running_loop().time() + self.retry.deadline

    async def run(
        self,
        what: str,
        fn: Callable[[Connection], Awaitable[T]],
        *,
        session_id: str | None = None,
        idempotent: bool = True,
        deadline: float | None = None,
        scope: tuple[str, str] | None = None,
        route: bool = False,
    ) -> T:
        """Run *fn* on a pooled connection, retrying failures of the connection or server.

        Each attempt gets what is left of the deadline (*deadline*, a loop time, defaults to
        now plus the policy's). A non-idempotent *fn* (``pop_message``) is retried only when
        the failure proves it had no effect. *scope* is ``(tenant, user or "*")`` for
        row-level security: when the role is subject to it, *fn* runs in a transaction that
        sets it first. With *route* (a call of one of the functions Citus delegates, for
        *session_id*), the call may go straight to the node holding the session (see
        :mod:`convostore._routing`); a node that fails an attempt is left out for a while and
        the retry goes through the main pool. Raises only :class:`ConvostoreError`. Measured
        with OpenTelemetry when it is installed (see :mod:`convostore._telemetry`).
        """
        attempts = _Attempts(self, what, session_id, deadline)
        routed = session_id if route else None
        measured = telemetry.start(what, session_id)
        if measured is None:
            return await self._attempts(attempts, fn, idempotent, scope, routed)
        try:
            result = await self._attempts(attempts, fn, idempotent, scope, routed)
        except BaseException as exc:
            measured.end(attempts=attempts.count, error=exc)
            raise
        measured.end(attempts=attempts.count, result=result)
        return result

    async def _attempts(
        self,
        attempts: _Attempts,
        fn: Callable[[Connection], Awaitable[T]],
        idempotent: bool,
        scope: tuple[str, str] | None,
        routed: str | None = None,
    ) -> T:
        while True:
            budget = attempts.budget()
            node: Node | None = None
            node_pool: asyncpg.Pool | None = None
            if routed is not None and self._routes is not None and self.options.route_to_nodes:
                node, node_pool = await self._node_pool(routed, budget)
            try:
                conn, pool = await self._acquire(budget, node_pool)
            except _Attempt as failed:
                if node is not None:
                    self._shun(node, failed.__cause__ or failed)
                await attempts.failed(failed, retry=failed.failure in _RETRIED_WHILE_ACQUIRING)
                continue
            # Known once a pool has opened (the store finds it out then).
            if scope is not None and self.row_security:
                call = _in_scope(fn, *scope, self.distributed, self._attempt_cap(budget))
            else:
                call = fn
            lost: _Attempt | None = None
            unreleased: Exception | None = None
            try:
                async with asyncio.timeout(budget):
                    result = await call(conn)
            except ConvostoreError:
                raise  # ours, raised on purpose inside fn: never retried
            except Exception as exc:
                lost = self._failed(exc, conn)
            finally:
                # After a failure, waiting (boundedly) for the server to confirm a cancel.
                unreleased = await self._release(pool, conn, None if lost is None else _CANCEL_WAIT, attempts.what)
            if lost is None:
                return result
            if unreleased is not None and lost.failure is Failure.TIMED_OUT:
                # The server did not confirm that it stopped the statement: it may still
                # commit (the connection is gone, so nothing will tell).
                raise StoreTimeout(
                    f"{attempts.what}: timed out, and the server did not confirm in {_CANCEL_WAIT}s that it "
                    f"stopped the statement: it may have committed ({describe(lost.__cause__ or lost)})"
                ) from unreleased
            if node is not None and lost.failure is Failure.CONNECTION_LOST:
                self._shun(node, lost.__cause__ or lost)
            retry = lost.failure is Failure.ROLLED_BACK or (lost.failure is Failure.CONNECTION_LOST and idempotent)
            await attempts.failed(lost, retry=retry)

    async def _acquire(
        self, budget: float | None, node_pool: asyncpg.Pool | None = None
    ) -> tuple[PoolConnectionProxy[Any], asyncpg.Pool]:
        """One try at a connection (from *node_pool* if given, else the main pool, opening and
        preparing it first if need be) within *budget*; raises :class:`_Attempt` (NOT_SENT,
        or how preparing the pool failed)."""
        try:
            pool = node_pool if node_pool is not None else await self.pool(budget)
            async with asyncio.timeout(_within(self.options.acquire_timeout, budget)):
                conn = await pool.acquire()
        except (ConvostoreError, _Attempt):
            raise
        except Exception as exc:
            raise _Attempt(classify(exc, None), None) from exc
        return conn, pool

    def _failed(self, exc: Exception, conn: Connection) -> _Attempt:
        failure = classify(exc, conn)
        if failure is Failure.CONNECTION_LOST and not is_closed(conn):
            # The connection may be dead or stuck mid-protocol: terminate it so that the pool
            # replaces it rather than handing it out again (the reset hook is a no-op). Never
            # after a timeout: asyncpg has asked the server to cancel the statement, and
            # closing the socket instead would let a statement blocked on a lock run (and
            # commit) once the lock is free, after its caller was told it failed.
            with contextlib.suppress(Exception):
                conn.terminate()
        failed = _Attempt(failure, conn)
        failed.__cause__ = exc
        return failed

    @contextlib.asynccontextmanager
    async def transaction(self, what: str, *, scope: tuple[str, str] | None = None) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction, for work that cannot be retried as a whole (a
        streaming import): getting the connection is retried within the deadline; failures
        while using it are translated. *scope* as for :meth:`run`."""
        attempts = _Attempts(self, what, None, None)
        while True:
            try:
                conn, pool = await self._acquire(attempts.budget())
                break
            except _Attempt as failed:
                await attempts.failed(failed, retry=failed.failure in _RETRIED_WHILE_ACQUIRING)
        try:
            async with conn.transaction():
                if scope is not None and self.row_security:
                    await conn.execute(_scope_settings(*scope, self.distributed))
                yield conn
        except ConvostoreError:
            raise
        except Exception as exc:
            lost = self._failed(exc, conn)
            raise translate(exc, what, lost.failure, self.scrub, self.url) from exc
        finally:
            await self._release(pool, conn, _CANCEL_WAIT, what)

    async def _release(
        self, pool: asyncpg.Pool, conn: PoolConnectionProxy[Any], wait: float | None, what: str
    ) -> Exception | None:
        """Give *conn* back to *pool* within *wait* seconds; return the error releasing raised, if
        any (asyncpg has terminated the connection then, and the pool replaces it): never
        raised as it is, a bare ``TimeoutError`` would reach the caller. asyncpg shields the
        release itself, so a cancelled caller cannot leak the connection; a cancelled
        statement's release first waits for the server to confirm the cancel."""
        try:
            await pool.release(conn, timeout=wait)
        except Exception as exc:
            logger.debug("%s: releasing the connection failed: %s", what, self.scrub(describe(exc)))
            return exc
        return None


class _Attempts:
    """The bookkeeping of one call's attempts: its deadline, its count, its backoff."""

    def __init__(self, runner: Runner, what: str, session_id: str | None, deadline: float | None) -> None:
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        self._what = what
        self._session_id = session_id
        self._end = deadline if deadline is not None else runner.deadline()
        self._count = 0

    @property
    def what(self) -> str:
        """The call's name, for its errors."""
        return self._what

    @property
    def count(self) -> int:
        """Attempts made so far."""
        return self._count

    def budget(self) -> float | None:
        """Seconds left for the next attempt (``None``: unbounded)."""
        self._count += 1
        if self._end is None:
            return None
        return max(self._end - self._loop.time(), 0.001)

    async def failed(self, failed: _Attempt, *, retry: bool) -> None:
        """Sleep before the next attempt, or raise the translated error if there is none."""
        exc = failed.__cause__
        assert isinstance(exc, BaseException)
        policy = self._runner.retry
        delay = policy.backoff(self._count)
        left = None if self._end is None else self._end - self._loop.time()
        out_of_time = left is not None and left < 0.01
        out_of_attempts = policy.attempts is not None and self._count >= policy.attempts
        if not retry or out_of_time or out_of_attempts:
            error = translate(exc, self._what, failed.failure, self._runner.scrub, self._runner.url)
            if retry:
                # Transient, but the call is out of time or attempts: say so.
                why = f"deadline of {policy.deadline}s" if out_of_time else f"{self._count} attempts"
                error = (StoreTimeout if out_of_time else StoreUnavailable)(f"{error} (gave up after {why})")
            raise error from exc
        logger.info(
            "%s: %s (%s, session %s); retry %d in %.3fs",
            self._what,
            failed.failure.value,
            self._runner.scrub(describe(exc)),
            self._session_id,
            self._count,
            delay,
        )
        await asyncio.sleep(delay if left is None else min(delay, left))


def _literal(value: str) -> str:
    """*value* as an SQL string literal, whatever ``standard_conforming_strings`` says."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _scope_settings(tenant: str, user: str, distributed: bool, statement_timeout: float | None = None) -> str:
    """The statements that set a transaction's row-level security scope (and, if given, its
    statement timeout). SET LOCAL (not set_config), which Citus propagates to the nodes the
    transaction involves when asked to."""
    propagate = "SET LOCAL citus.propagate_set_commands = 'local'; " if distributed else ""
    cap = "" if statement_timeout is None else f"; SET LOCAL statement_timeout = {_milliseconds(statement_timeout)}"
    return (
        f"{propagate}SET LOCAL convostore.tenant_id = {_literal(tenant)}; "
        f"SET LOCAL convostore.user_id = {_literal(user)}{cap}"
    )


def _in_scope(
    fn: Callable[[Connection], Awaitable[T]],
    tenant: str,
    user: str,
    distributed: bool,
    statement_timeout: float | None = None,
) -> Callable[[Connection], Awaitable[T]]:
    """*fn* in a transaction that first sets the row-level security scope (and *statement_timeout*);
    the transaction ends with the call (an aborted one is rolled back when the pool takes the
    connection back)."""
    begin = "BEGIN; " + _scope_settings(tenant, user, distributed, statement_timeout)

    async def scoped(conn: Connection) -> T:
        await conn.execute(begin)
        result = await fn(conn)
        await conn.execute("COMMIT")
        return result

    return scoped


# How long releasing a connection waits for the server to confirm a cancelled statement
# before the connection is terminated instead.
_CANCEL_WAIT = 2.0
_SHUN = 30.0  # seconds a node that failed a routed call is left out
# Failures of getting a connection that are retried: nothing was sent, or preparing a new pool
# (which is safe to repeat) lost its connection or was rolled back.
_RETRIED_WHILE_ACQUIRING = frozenset({Failure.NOT_SENT, Failure.CONNECTION_LOST, Failure.ROLLED_BACK})


def _within(timeout: float | None, budget: float | None) -> float | None:
    if budget is None:
        return timeout
    if timeout is None:
        return budget
    return min(timeout, budget)


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), 10)
    except Exception:
        pool.terminate()
