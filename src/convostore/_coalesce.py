"""Coalescing concurrent appends: one statement and one commit acknowledge many callers.

At 32-way concurrency a single-row INSERT per call is limited by per-statement overhead in
the client and by one commit (WAL flush) per message. The writer below keeps at most
``max_in_flight`` append statements running; requests that arrive meanwhile wait in a
queue and leave together, for any mix of sessions, in one statement (``APPEND_MANY``).

* A lone append is sent at once with the one-session statement: no timer, no added wait.
  When a statement completes, its slot is refilled one event-loop turn later, so that the
  callers it acknowledged can queue their next appends and leave together.
* Each caller gets its own result and its own error. Validation happens before queueing;
  if a combined statement still fails, every request in it is retried alone, so one bad
  request cannot fail its neighbours.
* Exactly once: requests carry client-generated message ids, and both statements return
  the stored rows of a request whose ids are already there (a retry after a lost ack).
* Bounded: at most ``max_batch_rows`` rows per statement and ``max_pending`` requests
  queued or in flight (callers beyond that wait for room).
* Acknowledged only after commit. A caller cancelled while its request is still queued
  removes it (nothing is written); once sent, the statement commits or fails as a whole.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from ._types import Connection
from ._validate import Row
from .errors import ConvostoreError, SessionNotFound, SessionOwnershipError

if TYPE_CHECKING:
    from .store import PostgresSessionStore

# What a caller gets back: (message id, seq, created_at) per stored row.
Stored = list[Any]
Owner = tuple[str, str] | None


@dataclass(slots=True)
class _Request:
    session_id: str
    rows: list[Row]
    create_as: Owner
    future: asyncio.Future[Stored] = field(repr=False)


class AppendWriter:
    """Queues append requests and sends them coalesced (see the module docstring)."""

    def __init__(
        self,
        store: PostgresSessionStore,
        send_one: Callable[[str, list[Row], Owner], Awaitable[Stored]],
        *,
        max_in_flight: int = 2,
        max_batch_rows: int = 2000,
        max_pending: int = 10_000,
    ) -> None:
        self._store = store
        self._send_one = send_one
        self._max_in_flight = max_in_flight
        self._max_batch_rows = max_batch_rows
        self._room = asyncio.Semaphore(max_pending)
        self._pending: deque[_Request] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def submit(self, session_id: str, rows: list[Row], create_as: Owner) -> Stored:
        """Append *rows* to *session_id*; returns once they are committed."""
        await self._room.acquire()
        request = _Request(session_id, rows, create_as, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self._idle.clear()
        if not self._holding:
            self._dispatch()
        return await request.future

    async def drain(self) -> None:
        """Wait until nothing is queued or in flight."""
        await self._idle.wait()

    def _dispatch(self) -> None:
        while self._in_flight < self._max_in_flight:
            batch = self._take()
            if not batch:
                break
            self._in_flight += 1
            task = asyncio.create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._pending and self._in_flight == 0:
            self._idle.set()

    def _take(self) -> list[_Request]:
        """The oldest requests that fit one statement: same kind (plain or create-on-write),
        at most max_batch_rows rows, and one owner per session."""
        batch: list[_Request] = []
        rows = 0
        owners: dict[str, Owner] = {}
        while self._pending:
            request = self._pending[0]
            if request.future.done():  # its caller was cancelled before it was sent
                self._pending.popleft()
                self._room.release()
                continue
            if batch and (
                (request.create_as is None) != (batch[0].create_as is None)
                or rows + len(request.rows) > self._max_batch_rows
                or owners.get(request.session_id, request.create_as) != request.create_as
            ):
                break
            self._pending.popleft()
            batch.append(request)
            rows += len(request.rows)
            owners[request.session_id] = request.create_as
        return batch

    async def _flush(self, batch: list[_Request]) -> None:
        try:
            if len(batch) == 1:
                await self._one(batch[0])
            else:
                await self._many(batch)
        finally:
            self._in_flight -= 1
            for _ in batch:
                self._room.release()
            # Refill the freed slot one loop turn later: the callers just acknowledged run
            # first, and their next appends leave together instead of one by one.
            self._holding += 1
            asyncio.get_running_loop().call_soon(self._release_hold)

    def _release_hold(self) -> None:
        self._holding -= 1
        self._dispatch()

    async def _one(self, request: _Request) -> None:
        try:
            result = await self._send_one(request.session_id, request.rows, request.create_as)
        except Exception as exc:  # delivered to its caller, who raises it
            _settle(request, exc=exc)
        else:
            _settle(request, result=result)

    async def _many(self, batch: list[_Request]) -> None:
        store = self._store
        create = batch[0].create_as is not None
        columns: list[list[Any]] = [[] for _ in range(10)]
        for index, request in enumerate(batch):
            owner, agent = request.create_as or (None, None)
            for row in request.rows:
                values = (request.session_id, *row, index, owner, agent)
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
        sql = store._q.append_many_or_create if create else store._q.append_many

        async def run(conn: Connection) -> list[Any]:
            return await conn.fetch(sql, *columns)

        try:
            records = await store._run("add_messages", run)
        except ConvostoreError:
            # Something in the batch was refused: send each request alone so that only the
            # faulty one fails. Ids make this safe even if part of it was applied.
            await asyncio.gather(*(self._one(r) for r in batch))
            return
        found: dict[tuple[str, str], Any] = {(r["session_id"], r["id"]): r for r in records}
        missing: list[_Request] = []
        for request in batch:
            stored = [found[key] for row in request.rows if (key := (request.session_id, row[0])) in found]
            if stored:
                _settle(request, result=stored)
            else:
                missing.append(request)
        if missing:
            await self._explain(missing)

    async def _explain(self, missing: list[_Request]) -> None:
        """Requests that stored nothing: unknown session, another owner, or a race with an
        identical request (then sending it alone returns the stored rows)."""
        store = self._store
        ids = list({r.session_id for r in missing})
        try:
            rows = await store._run("add_messages", partial(_owners, store._q.session_owners, ids))
        except ConvostoreError as exc:
            for request in missing:
                _settle(request, exc=exc)
            return
        owners = {r["id"]: r["user_id"] for r in rows}
        retry = []
        for request in missing:
            owner = owners.get(request.session_id)
            if owner is None:
                _settle(request, exc=SessionNotFound(f"session {request.session_id!r} does not exist"))
            elif request.create_as is not None and owner != request.create_as[0]:
                _settle(request, exc=SessionOwnershipError(f"session {request.session_id!r} belongs to another user"))
            else:
                retry.append(request)
        await asyncio.gather(*(self._one(r) for r in retry))


async def _owners(sql: str, ids: list[str], conn: Connection) -> list[Any]:
    return await conn.fetch(sql, ids)


def _settle(request: _Request, *, result: Stored | None = None, exc: BaseException | None = None) -> None:
    if request.future.done():  # the caller went away; the write stands or fails on its own
        return
    if exc is not None:
        request.future.set_exception(exc)
    else:
        request.future.set_result(result if result is not None else [])
