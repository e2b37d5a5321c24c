"""Connection pools: one per event loop, created on first use in that loop.

asyncpg connections belong to the loop that opened them, so a store shared by
``Runner.run_sync`` calls or by worker threads gets a pool in each loop instead of failing
(or worse, committing a write on a connection another loop is using). A pool closes when its
loop shuts down, with the other pools of that loop (the Citus nodes', see
``convostore.citus``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import asyncpg

from ._attempts import milliseconds
from ._failures import redact, secrets_of
from ._types import Connection
from .citus._setup import connection_init
from .errors import StoreClosed

logger = logging.getLogger("convostore")

T = TypeVar("T")


async def keep_session_state(conn: Connection) -> None:
    """Pool ``reset`` hook. asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` on every release: a second round trip per call. convostore's only
    session state is the settings made once per connection on Citus (``citus._setup.CITUS_SESSION``);
    its advisory locks and other settings are transaction-scoped, and asyncpg still rolls back
    an open transaction before calling this hook, so there is nothing to reset."""


@dataclass
class LoopState:
    """What a runner keeps per event loop."""

    opening: asyncio.Future[asyncpg.Pool] | None = None
    pool: asyncpg.Pool | None = None
    locals: dict[str, Any] = field(default_factory=dict)
    # Pools straight to the nodes holding sessions (``route_to_nodes``, see convostore.citus),
    # opened on first use, closed with the loop's pool.
    nodes: dict[Any, asyncpg.Pool] = field(default_factory=dict)
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


class Pools:
    """The pools of one database, one per event loop (see the module docstring).

    *url* is resolved on first use: the given URL, else ``$DATABASE_URL``, else the embedded
    PostgreSQL (started in a thread). Thread-safe. *ready* runs on each new pool, within the
    opening call's budget, before any call may use it (the runner prepares it there);
    *statement_timeout* is the server-side bound its connections are given.
    """

    def __init__(
        self,
        url: str | None,
        options: PoolOptions,
        *,
        ready: Callable[[asyncpg.Pool, float | None], Awaitable[None]],
        statement_timeout: Callable[[], float | None],
    ) -> None:
        self._url = url
        self.options = options
        self._ready = ready
        self._statement_timeout = statement_timeout
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, LoopState] = {}
        self._closed = False
        self._secrets: list[str] = secrets_of(url) if url else []

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

    def state(self) -> LoopState:
        """The running loop's state, made on first use; :class:`StoreClosed` once closed."""
        if self._closed:
            raise StoreClosed("the store is closed: call connect() to use it again")
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
                self._forget_dead_loops()
                state = self._loops[loop] = LoopState()
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
        state = self.state()
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
        state = self.state()
        if state.pool is not None:
            return state.pool
        if state.opening is None:
            state.opening = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._open(state, budget))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        return await asyncio.shield(state.opening)

    async def _open(self, state: LoopState, budget: float | None) -> None:
        assert state.opening is not None
        opening = state.opening
        pool = None
        try:
            url = await self.resolve_url()
            o = self.options
            pool = self.create_pool(url, budget)
            async with asyncio.timeout(o.connect_timeout if budget is None else min(o.connect_timeout, budget)):
                await pool
            await self._ready(pool, budget)
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

    def create_pool(self, url: str, budget: float | None, **overrides: Any) -> asyncpg.Pool:
        """An asyncpg pool (not yet initialised) built from the options; *overrides* replace
        some of its arguments (a node's host and port)."""
        o = self.options
        kwargs = dict(o.connect_kwargs)
        init = connection_init(kwargs.pop("init", None), citus=not o.pgbouncer)
        bound = self._statement_timeout()
        if bound is not None and not o.pgbouncer:
            # The server stops a statement its client gave up on by itself, even when the
            # client's cancel request is lost on the way: else a statement waiting on a lock
            # commits once the lock frees, after its caller was told it failed. Given in the
            # startup packet, so no statement is spent on it. Not through pgbouncer, which
            # refuses startup parameters it does not know (there each scoped transaction sets
            # its own, see _attempt_cap). The caller's own server_settings take precedence.
            settings = dict(kwargs.get("server_settings") or {})
            settings.setdefault("statement_timeout", str(milliseconds(bound)))
            kwargs["server_settings"] = settings
        kwargs.update(
            min_size=o.min_size,
            max_size=o.max_size,
            command_timeout=o.command_timeout,
            statement_cache_size=0 if o.pgbouncer else 1024,
            max_inactive_connection_lifetime=o.max_inactive_connection_lifetime,
            reset=keep_session_state,
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
            await close_pool(pool)
            for node in nodes:
                await close_pool(node)

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
                    await close_pool(pool)
                elif not loop.is_closed() and loop.is_running():
                    future = asyncio.run_coroutine_threadsafe(close_pool(pool), loop)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.wrap_future(future), 10)
                else:
                    with contextlib.suppress(Exception):
                        pool.terminate()


async def close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), 10)
    except Exception:
        pool.terminate()
