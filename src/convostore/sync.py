"""``SyncSessionStore``: the store for synchronous code (scripts, notebooks, WSGI apps, threads).

A synchronous twin of :class:`~convostore.PostgresSessionStore` with the same methods, the
same errors and the same guarantees, because it runs the very same store: each call is sent
to an event loop of the facade's own, in a background thread, and the calling thread waits
for its result. Any number of threads may call at once (concurrent appends then share
statements, as in async code). A call interrupted in the calling thread (Ctrl-C) does not
interrupt its write: the write completes or fails in the loop's thread, as a cancelled async
caller's does.

::

    with SyncSessionStore(database_url) as store:
        store.add_messages("conv-1", [{"role": "user", "content": "hi"}], user_id="alice")
        print(store.get_messages("conv-1"))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from ._retention import Sweeper
from .errors import StoreClosed
from .store import PostgresSessionStore
from .transfer import ImportReport, export_jsonl, import_jsonl

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["SyncSessionStore"]


class _LoopThread:
    """An event loop running in a daemon thread, shared by a facade and its views."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="convostore-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, R]) -> Future[R]:
        if self.loop.is_closed() or not self._thread.is_alive():
            coro.close()
            raise StoreClosed("the synchronous store is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        # As asyncio.run does: finish the loop's async generators (the runner's per-loop
        # pool closer is one) before the loop goes.
        asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _blocking(
    method: Callable[Concatenate[PostgresSessionStore, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SyncSessionStore, P], R]:
    """The synchronous twin of an async method of the store."""

    def call(self: SyncSessionStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(method(self.store, *args, **kwargs))

    call.__name__ = method.__name__
    call.__qualname__ = f"SyncSessionStore.{method.__name__}"
    call.__doc__ = method.__doc__
    call.__wrapped__ = method  # type: ignore[attr-defined]  # inspect.signature shows the store's
    return call


class SyncSessionStore:
    """A :class:`~convostore.PostgresSessionStore` for synchronous callers (see the module
    docstring). Takes the store's arguments, or an existing store as *store*."""

    def __init__(self, database_url: str | None = None, *, store: PostgresSessionStore | None = None, **options: Any):
        if store is not None and (database_url is not None or options):
            raise TypeError("give either a store or the arguments of one, not both")
        self.store = store if store is not None else PostgresSessionStore(database_url, **options)
        self._loop = _LoopThread()
        self._owns_loop = True

    @classmethod
    def _view(cls, store: PostgresSessionStore, loop: _LoopThread) -> SyncSessionStore:
        view = cls.__new__(cls)
        view.store, view._loop, view._owns_loop = store, loop, False
        return view

    def _call(self, coro: Coroutine[Any, Any, R]) -> R:
        if _in_loop_thread(self._loop.loop):
            coro.close()
            raise RuntimeError("SyncSessionStore was called from its own event loop: use the async store there")
        return self._loop.submit(coro).result()

    # -- lifecycle and views ------------------------------------------------------------------

    def scoped(self, *, tenant: str | None = None, user: str | None = None) -> SyncSessionStore:
        """A view of another tenant or of one user (see ``PostgresSessionStore.scoped``),
        sharing this facade's pools and thread."""
        return SyncSessionStore._view(self.store.scoped(tenant=tenant, user=user), self._loop)

    @property
    def tenant(self) -> str:
        """The tenant this store acts in."""
        return self.store.tenant

    @property
    def user(self) -> str | None:
        """The user of a user view (``None``: every user of the tenant)."""
        return self.store.user

    def connect(self) -> Self:
        """Open the pool now (and migrate, as the store would on first use)."""
        self._call(self.store.connect())
        return self

    def close(self) -> None:
        """Close the store's pools, then the facade's thread (a view closes nothing)."""
        if not self._owns_loop:
            return
        try:
            if not self._loop.loop.is_closed():
                self._call(self.store.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the store's methods --------------------------------------------------------------------
    # Listed one by one, not generated in a loop, so that type checkers see each signature;
    # tests/test_sync.py checks that every public async method of the store is here.

    migrate = _blocking(PostgresSessionStore.migrate)
    distribute = _blocking(PostgresSessionStore.distribute)
    migration_status = _blocking(PostgresSessionStore.migration_status)
    create_session = _blocking(PostgresSessionStore.create_session)
    get_session = _blocking(PostgresSessionStore.get_session)
    update_metadata = _blocking(PostgresSessionStore.update_metadata)
    set_expiry = _blocking(PostgresSessionStore.set_expiry)
    delete_session = _blocking(PostgresSessionStore.delete_session)
    get_user_sessions = _blocking(PostgresSessionStore.get_user_sessions)
    list_sessions = _blocking(PostgresSessionStore.list_sessions)
    add_message = _blocking(PostgresSessionStore.add_message)
    add_messages = _blocking(PostgresSessionStore.add_messages)
    get_messages = _blocking(PostgresSessionStore.get_messages)
    pop_message = _blocking(PostgresSessionStore.pop_message)
    clear_session = _blocking(PostgresSessionStore.clear_session)
    fork_session = _blocking(PostgresSessionStore.fork_session)
    list_branches = _blocking(PostgresSessionStore.list_branches)
    delete_branch = _blocking(PostgresSessionStore.delete_branch)
    compact = _blocking(PostgresSessionStore.compact)
    search = _blocking(PostgresSessionStore.search)
    search_index = _blocking(PostgresSessionStore.search_index)
    create_search_index = _blocking(PostgresSessionStore.create_search_index)
    drop_search_index = _blocking(PostgresSessionStore.drop_search_index)
    get_state = _blocking(PostgresSessionStore.get_state)
    update_state = _blocking(PostgresSessionStore.update_state)
    record_usage = _blocking(PostgresSessionStore.record_usage)
    usage = _blocking(PostgresSessionStore.usage)
    idle_cutoff = _blocking(PostgresSessionStore.idle_cutoff)
    delete_idle_sessions = _blocking(PostgresSessionStore.delete_idle_sessions)
    count_idle_sessions = _blocking(PostgresSessionStore.count_idle_sessions)
    delete_expired_sessions = _blocking(PostgresSessionStore.delete_expired_sessions)
    delete_user = _blocking(PostgresSessionStore.delete_user)
    stop_sweeper = _blocking(PostgresSessionStore.stop_sweeper)
    stats = _blocking(PostgresSessionStore.stats)
    audit = _blocking(PostgresSessionStore.audit)
    rekey = _blocking(PostgresSessionStore.rekey)

    def start_sweeper(self, interval: float, *, batch_size: int = 1000) -> Sweeper:
        """Delete expired sessions every *interval* seconds, in the facade's event loop (see
        ``PostgresSessionStore.start_sweeper``); :meth:`stop_sweeper` or :meth:`close` stops it."""

        async def start() -> Sweeper:
            return self.store.start_sweeper(interval, batch_size=batch_size)

        return self._call(start())

    def export_jsonl(self, **kwargs: Any) -> Iterator[str]:
        """The export's lines (see :func:`convostore.export_jsonl`), read page by page."""
        lines = export_jsonl(self.store, **kwargs)

        async def step() -> str | None:
            return await anext(lines, None)

        async def close() -> None:
            await lines.aclose()

        try:
            while (line := self._call(step())) is not None:
                yield line
        finally:
            self._call(close())

    def import_jsonl(self, lines: Any, **kwargs: Any) -> ImportReport:
        """Import an export (see :func:`convostore.import_jsonl`)."""
        return self._call(import_jsonl(self.store, lines, **kwargs))


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
