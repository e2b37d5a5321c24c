"""The one place where statements run: it ties the pools, the attempts and the failures together.

Everything that talks to PostgreSQL goes through a :class:`Runner`: the store, the append
coalescer, export and import, the framework adapters. Its parts:

* :mod:`convostore._pools`: **the pools, one per event loop**, created on first use there;
* :mod:`convostore._attempts`: **attempts**, each given what is left of the call's deadline,
  never the full timeouts again, so no call outlives its deadline;
* :mod:`convostore._failures`: **the classification of driver errors**, once, on asyncpg's
  exception classes, and their translation into convostore's hierarchy;
* :mod:`convostore._rls`: the row-level security scope a call's transaction sets;
* :mod:`convostore.citus`: on Citus, calls sent straight to the node holding their session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from . import _telemetry as telemetry
from ._attempts import (
    CANCEL_WAIT,
    RETRIED_WHILE_ACQUIRING,
    AttemptFailed,
    Attempts,
    failed_on,
    within,
)
from ._failures import Failure, classify, describe, translate
from ._pools import PoolOptions, Pools
from ._rls import in_scope, scope_settings
from ._types import Connection
from .citus._nodes import Nodes
from .citus._shards import Node, ShardMap
from .errors import AccessDenied, ConvostoreError, StoreTimeout
from .retry import RetryPolicy

logger = logging.getLogger("convostore")

T = TypeVar("T")

__all__ = ["PoolOptions", "Runner"]


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
        self._prepare = prepare
        # Whether the connecting role is subject to row-level security (set by the store when a
        # pool opens): then every statement that is not one of the scope-setting functions runs
        # in a transaction that first sets its scope.
        self.row_security = False
        # The tenant (and user, or None) the connecting role is bound to (convostore.roles),
        # set by the store when a pool opens; None if it is not bound.
        self.bound: tuple[str, str | None] | None = None
        # Whether the tables are distributed (Citus): set by the store when a pool opens.
        self.distributed = False
        self.options = options
        self.retry = retry
        self.pools = Pools(url, options, ready=self._ready, statement_timeout=self.statement_timeout)
        self.nodes = Nodes(self.pools)
        # What the pools and the nodes answer for, bound once (the append path calls loop_local
        # on every call).
        self.loop_local = self.pools.loop_local
        self.find_local = self.pools.find_local
        self.current_pool = self.pools.current_pool
        self.reopen = self.pools.reopen
        self.close = self.pools.close
        self.scrub = self.pools.scrub
        self.resolve_url = self.pools.resolve_url
        self.node_of = self.nodes.node_of
        self.node_pools = self.nodes.node_pools
        self.shunned = self.nodes.shunned

    @property
    def url(self) -> str | None:
        """The database URL once resolved (``None`` before first use, if none was given)."""
        return self.pools.url

    @property
    def route_table(self) -> str | None:
        """The sessions table whose shard map is read (on distributed tables; set by the store
        when a pool opens)."""
        return self.nodes.route_table

    @route_table.setter
    def route_table(self, table: str | None) -> None:
        self.nodes.route_table = table

    @property
    def routes(self) -> ShardMap | None:
        """The shard map of the distributed tables (``None``: not distributed, or not read)."""
        return self.nodes.routes

    async def pool(self, budget: float | None = None) -> asyncpg.Pool:
        """This loop's pool, opened on first use within *budget* seconds (see :class:`Pools`)."""
        return await self.pools.pool(budget)

    async def _ready(self, pool: asyncpg.Pool, budget: float | None) -> None:
        """Prepare a new pool (migrating, for the store), then read the shard map if the tables
        are distributed."""
        if self._prepare is not None:
            async with asyncio.timeout(budget), pool.acquire() as conn:
                await self._prepared(conn)
        if self.nodes.route_table is not None:
            async with asyncio.timeout(budget), pool.acquire() as conn:
                await self.nodes.read(conn)

    async def _prepared(self, conn: Connection) -> None:
        """Run *prepare* (migrating, for the store) on a new pool's first connection. Its
        failures are classified like a call's: preparing is safe to repeat (each migration
        runs in its own transaction and is skipped once recorded), so a lost connection or a
        rolled-back transaction is retried by the call that opened the pool, within its
        deadline (raised as :class:`AttemptFailed`)."""
        assert self._prepare is not None
        try:
            await self._prepare(conn)
            if self.options.pgbouncer and self.statement_timeout() is not None:
                await self._check_server_bound(conn)
        except ConvostoreError:
            raise
        except Exception as exc:
            raise failed_on(exc, conn) from exc

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
            return within(bound, budget)
        if budget is not None and bound is not None and budget + CANCEL_WAIT < bound:
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
        ``convostore.citus``); a node that fails an attempt is left out for a while and
        the retry goes through the main pool. Raises only :class:`ConvostoreError`. Measured
        with OpenTelemetry when it is installed (see :mod:`convostore._telemetry`).
        """
        attempts = Attempts(self, what, session_id, deadline)
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
        attempts: Attempts,
        fn: Callable[[Connection], Awaitable[T]],
        idempotent: bool,
        scope: tuple[str, str] | None,
        routed: str | None = None,
    ) -> T:
        while True:
            budget = attempts.budget()
            node: Node | None = None
            node_pool: asyncpg.Pool | None = None
            if routed is not None and self.nodes.routes is not None and self.options.route_to_nodes:
                node, node_pool = await self.nodes.pool_for(routed, budget)
            try:
                conn, pool = await self._acquire(budget, node_pool)
            except AttemptFailed as failed:
                if node is not None:
                    self.nodes.shun(node, failed.__cause__ or failed)
                await attempts.failed(failed, retry=failed.failure in RETRIED_WHILE_ACQUIRING)
                continue
            # Known once a pool has opened (the store finds it out then).
            if scope is not None and self.row_security:
                call = in_scope(fn, *scope, self.distributed, self._attempt_cap(budget))
            else:
                call = fn
            lost: AttemptFailed | None = None
            unreleased: Exception | None = None
            try:
                async with asyncio.timeout(budget):
                    result = await call(conn)
            except ConvostoreError:
                raise  # ours, raised on purpose inside fn: never retried
            except Exception as exc:
                lost = failed_on(exc, conn)
            finally:
                # After a failure, waiting (boundedly) for the server to confirm a cancel.
                unreleased = await self._release(pool, conn, None if lost is None else CANCEL_WAIT, attempts.what)
            if lost is None:
                return result
            if unreleased is not None and lost.failure is Failure.TIMED_OUT:
                # The server did not confirm that it stopped the statement: it may still
                # commit (the connection is gone, so nothing will tell).
                raise StoreTimeout(
                    f"{attempts.what}: timed out, and the server did not confirm in {CANCEL_WAIT}s that it "
                    f"stopped the statement: it may have committed ({describe(lost.__cause__ or lost)})"
                ) from unreleased
            if node is not None and lost.failure is Failure.CONNECTION_LOST:
                self.nodes.shun(node, lost.__cause__ or lost)
            retry = lost.failure is Failure.ROLLED_BACK or (lost.failure is Failure.CONNECTION_LOST and idempotent)
            await attempts.failed(lost, retry=retry)

    def check_bound(self, tenant: str, user: str | None) -> None:
        """Refuse (:class:`~convostore.errors.AccessDenied`) a call for *tenant* (and *user*,
        ``None``: any) when the connecting role is bound to another (known once a pool has
        opened; the database refuses it anyway)."""
        bound = self.bound
        if bound is not None and (tenant != bound[0] or (bound[1] is not None and user not in (None, bound[1]))):
            what = f"tenant {bound[0]!r}" + ("" if bound[1] is None else f" and user {bound[1]!r}")
            raise AccessDenied(
                f"the database role is bound to {what}: it cannot act for tenant {tenant!r}"
                + ("" if user is None else f", user {user!r}")
            )

    async def _acquire(
        self, budget: float | None, node_pool: asyncpg.Pool | None = None
    ) -> tuple[PoolConnectionProxy[Any], asyncpg.Pool]:
        """One try at a connection (from *node_pool* if given, else the main pool, opening and
        preparing it first if need be) within *budget*; raises :class:`AttemptFailed` (NOT_SENT,
        or how preparing the pool failed)."""
        try:
            pool = node_pool if node_pool is not None else await self.pools.pool(budget)
            async with asyncio.timeout(within(self.options.acquire_timeout, budget)):
                conn = await pool.acquire()
        except (ConvostoreError, AttemptFailed):
            raise
        except Exception as exc:
            raise AttemptFailed(classify(exc, None), None) from exc
        return conn, pool

    @contextlib.asynccontextmanager
    async def transaction(self, what: str, *, scope: tuple[str, str] | None = None) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction, for work that cannot be retried as a whole (a
        streaming import): getting the connection is retried within the deadline; failures
        while using it are translated. *scope* as for :meth:`run`."""
        attempts = Attempts(self, what, None, None)
        while True:
            try:
                conn, pool = await self._acquire(attempts.budget())
                break
            except AttemptFailed as failed:
                await attempts.failed(failed, retry=failed.failure in RETRIED_WHILE_ACQUIRING)
        try:
            async with conn.transaction():
                if scope is not None and self.row_security:
                    await conn.execute(scope_settings(*scope, self.distributed))
                yield conn
        except ConvostoreError:
            raise
        except Exception as exc:
            lost = failed_on(exc, conn)
            raise translate(exc, what, lost.failure, self.scrub, self.url) from exc
        finally:
            await self._release(pool, conn, CANCEL_WAIT, what)

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
