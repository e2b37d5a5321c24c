"""Coalescing concurrent appends: one statement and one commit acknowledge many callers.

At 32-way concurrency a single-row INSERT per call is limited by per-statement overhead in
the client and by one commit (WAL flush) per message. The writer below keeps at most
``max_in_flight`` append statements running; requests that arrive meanwhile wait in a
queue and leave together, for any mix of sessions, in one statement.

* A lone append is sent at once with the one-session statement, from its caller's own call
  when nothing is queued: no timer, no hop, no added wait. When a statement completes while
  others wait, its slot is refilled three event-loop turns later, so that the callers it
  acknowledged can queue their next appends and leave together.
* Every waiter is settled, on every path, within its deadline: with its rows, or with its
  own error. If the shared statement is refused because of one request, each request is
  sent again alone so that only the faulty one fails; if the database is unavailable or
  out of time, every caller gets that error at once (nothing is re-run).
* A session whose row another transaction holds is skipped by the shared statement and its
  requests are sent alone, outside the statement slots, so it stalls no unrelated append.
* Exactly once and in order: requests carry client-generated message ids (a retry after a
  lost acknowledgement returns the stored rows). A caller cancelled while its request is
  queued removes it (nothing is written); once sent, the caller does not return before
  the statement's outcome is known, so its next append can never overtake it.
* On distributed tables (Citus), a statement carries only sessions that one node holds (by
  the shard map; one session while the map is not known): it runs whole on that node, which
  writes its shards' own tables (``_sql.APPEND_SHARDED_FUNCTION``).
* Bounded: at most ``max_batch_rows`` rows per statement and ``max_pending`` requests queued
  or in flight; a caller that finds no room waits at most until its deadline.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from . import _telemetry as telemetry
from ._appends import Appender, AppendRequest, Stored
from ._attempts import settle_despite_cancel
from .errors import ConvostoreError, DatabaseError, StoreTimeout, StoreUnavailable

logger = logging.getLogger("convostore.coalesce")


class _State(enum.Enum):
    QUEUED = 1
    SENT = 2
    DROPPED = 3


@dataclass(slots=True, eq=False)
class _Item:
    request: AppendRequest
    future: asyncio.Future[Stored] = field(repr=False)
    deadline: float | None
    group: object = None  # which requests may share its call (Appender.group_of)
    state: _State = _State.QUEUED
    handed_off: bool = False  # settled by another task (a lone send), not by its batch's flush


class AppendWriter:
    """Queues append requests and sends them coalesced (see the module docstring). One per
    event loop."""

    def __init__(
        self,
        appender: Appender,
        *,
        max_in_flight: int = 2,
        max_batch_rows: int = 2000,
        max_pending: int = 10_000,
    ) -> None:
        self._appender = appender
        self._max_in_flight = max_in_flight
        self._max_batch_rows = max_batch_rows
        self._room = asyncio.Semaphore(max_pending)
        self._pending: deque[_Item] = deque()
        self._in_flight = 0
        self._flying: dict[object, int] = {}  # calls in flight per group (Appender.group_of)
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def submit(self, request: AppendRequest, deadline: float | None) -> Stored:
        """Append *request*; returns once its rows are committed. *deadline* is a loop time:
        a request still queued then is dropped with :class:`StoreTimeout`, and a sent one is
        bounded by it (its call gets what is left of the earliest deadline of its batch)."""
        if self._room.locked():
            try:
                async with asyncio.timeout_at(deadline):
                    await self._room.acquire()
            except TimeoutError:
                raise StoreTimeout(
                    "add_messages: too many appends waiting; none finished within the deadline"
                ) from None
        else:
            await self._room.acquire()  # free: no wait, no timer on the hot path
        group = self._appender.group_of(request.session_id)
        if not self._pending and not self._holding and self._has_slot(group):
            return await self._direct(request, deadline, group)
        item = _Item(request, asyncio.get_running_loop().create_future(), deadline, group)
        self._pending.append(item)
        self._idle.clear()
        if not self._holding:
            self._dispatch()
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            if item.state is _State.QUEUED:
                self._drop(item)
                raise
            # Sent: its call commits or fails as a whole. Wait for that before giving the
            # caller its cancellation, so that its next append cannot overtake this one.
            await _settled(item.future)
            raise

    async def _direct(self, request: AppendRequest, deadline: float | None, group: object) -> Stored:
        """Send *request* at once, from the caller's own call: nothing is queued to share a
        statement with, so no hop through a task of the writer's. Appends arriving meanwhile
        queue behind it and leave together when its slot frees."""
        telemetry.batch(1)
        self._sent(group)
        try:
            return await settle_despite_cancel(self._appender.one(request, deadline=deadline))
        finally:
            self._room.release()
            self._slot_freed(group, hold=bool(self._pending))

    def _has_slot(self, group: object) -> bool:
        """Whether a call for *group* may start now (see :meth:`_dispatch`)."""
        if self._appender.by_node:
            return self._flying.get(group, 0) < self._max_in_flight
        return self._in_flight < self._max_in_flight * (4 if self._appender.distributed else 1)

    def _sent(self, group: object) -> None:
        self._in_flight += 1
        self._flying[group] = self._flying.get(group, 0) + 1
        self._idle.clear()

    def _slot_freed(self, group: object, *, hold: bool = True) -> None:
        self._in_flight -= 1
        if self._flying[group] > 1:
            self._flying[group] -= 1
        else:
            del self._flying[group]
        if not hold:  # a direct call's caller resumes by itself, and nothing waits
            self._check_idle()
            return
        # Refill the freed slot three loop turns later: the callers just acknowledged
        # resume two turns after their results are set (the futures' callbacks, then the
        # wake-up of their shielded waits), queue their next appends, and these leave
        # together instead of the first one alone.
        self._holding += 1
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, loop.call_soon, self._release_hold)

    def _settle(self, item: _Item, *, result: Stored | None = None, exc: BaseException | None = None) -> None:
        """Give *item*'s caller its rows or its error (once; later calls do nothing)."""
        if item.future.done():
            return
        self._room.release()
        if exc is not None:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result if result is not None else [])

    async def drain(self) -> None:
        """Wait until nothing is queued or in flight."""
        await self._idle.wait()

    def _drop(self, item: _Item) -> None:
        item.state = _State.DROPPED
        if not item.future.done():
            item.future.cancel()
            self._room.release()
        self._check_idle()

    def _check_idle(self) -> None:
        if self._in_flight == 0 and not self._tasks and all(i.state is _State.DROPPED for i in self._pending):
            self._pending.clear()
            self._idle.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.error("append task failed", exc_info=t.exception())
            self._check_idle()

        task.add_done_callback(done)

    def _dispatch(self) -> None:
        # On distributed tables each call runs whole on one node: as many calls in flight per
        # node as one database gets; one session per call (no shard map), four times that in all.
        appender = self._appender
        per_node = self._max_in_flight if appender.by_node else None
        limit = self._max_in_flight * (4 if appender.distributed and per_node is None else 1)
        while per_node is not None or self._in_flight < limit:
            batch = self._take(per_node)
            if not batch:
                break
            self._sent(batch[0].group)
            self._spawn(self._flush(batch))
        self._check_idle()

    def _take(self, per_group: int | None = None) -> list[_Item]:
        """The oldest requests that fit one call: one tenant, at most max_batch_rows rows, and
        one owner per session. On distributed tables, only requests of the head's node (or of
        its session, when the shard map is not known), taken from anywhere in the queue (each
        session's order is kept), the head's node having fewer than *per_group* calls in
        flight."""
        batch: list[_Item] = []
        rows = 0
        owners: dict[str, str | None] = {}
        now = asyncio.get_running_loop().time()
        skipped: list[_Item] = []
        while self._pending:
            item = self._pending[0]
            if item.state is _State.DROPPED:
                self._pending.popleft()
                continue
            if item.deadline is not None and now >= item.deadline:
                self._pending.popleft()
                item.state = _State.DROPPED
                self._settle(item, exc=StoreTimeout("add_messages: not sent within the deadline (the queue was busy)"))
                continue
            request = item.request
            if not batch and per_group is not None and self._flying.get(item.group, 0) >= per_group:
                skipped.append(self._pending.popleft())  # its node has enough calls in flight: stays queued
                continue
            if batch and item.group != batch[0].group:
                skipped.append(self._pending.popleft())  # another node's or session's: stays queued
                continue
            if batch and (
                request.tenant != batch[0].request.tenant
                or rows + len(request.rows) > self._max_batch_rows
                or owners.get(request.session_id, request.owner) != request.owner
            ):
                break
            self._pending.popleft()
            item.state = _State.SENT
            batch.append(item)
            rows += len(request.rows)
            owners[request.session_id] = request.owner
        self._pending.extendleft(reversed(skipped))
        return batch

    async def _flush(self, batch: list[_Item]) -> None:
        telemetry.batch(len(batch))
        try:
            if len(batch) == 1:
                await self._alone(batch[0])
            else:
                await self._together(batch)
        except BaseException as exc:
            error = exc if isinstance(exc, ConvostoreError) else DatabaseError(f"add_messages: {exc!r}")
            for item in batch:
                if not item.handed_off:
                    self._settle(item, exc=error)
            if not isinstance(exc, Exception):
                raise
            logger.exception("coalesced append failed unexpectedly")
        finally:
            for item in batch:  # a safety net: no path may leave a waiter behind
                if not item.handed_off:
                    self._settle(item, exc=DatabaseError("add_messages: the append was not completed"))
            self._slot_freed(batch[0].group)

    def _release_hold(self) -> None:
        self._holding -= 1
        self._dispatch()

    async def _alone(self, item: _Item) -> None:
        try:
            result = await self._appender.one(item.request, deadline=item.deadline)
        except ConvostoreError as exc:
            self._settle(item, exc=exc)
        else:
            self._settle(item, result=result)

    async def _alone_in_order(self, items: list[_Item]) -> None:
        """Send *items* (one session's, in queue order) in one call that waits for the
        session's row (many callers of one busy session then take one lock, not one each);
        if one of them is refused, one after the other, so that only it fails."""
        try:
            if len(items) > 1:
                deadlines = [i.deadline for i in items if i.deadline is not None]
                try:
                    outcome = await self._appender.many(
                        [i.request for i in items], deadline=min(deadlines, default=None), wait=True
                    )
                except StoreUnavailable as exc:
                    for item in items:
                        self._settle(item, exc=exc)
                    return
                except ConvostoreError:
                    pass  # one of them was refused: alone below
                else:
                    for index, stored in outcome.stored.items():
                        self._settle(items[index], result=stored)
                    for index, error in outcome.refused.items():
                        self._settle(items[index], exc=error)
            for item in items:
                if not item.future.done():
                    await self._alone(item)
        finally:
            for item in items:
                self._settle(item, exc=DatabaseError("add_messages: the append was not completed"))

    async def _together(self, batch: list[_Item]) -> None:
        deadlines = [i.deadline for i in batch if i.deadline is not None]
        try:
            outcome = await self._appender.many([i.request for i in batch], deadline=min(deadlines, default=None))
        except StoreUnavailable as exc:
            # The database, not a request, failed (after the runner's retries): tell everyone.
            for item in batch:
                self._settle(item, exc=exc)
            return
        except ConvostoreError:
            # Something in the batch was refused: send each request alone so that only the
            # faulty one fails. Ids make this safe even if part of it was applied.
            await asyncio.gather(*(self._alone(i) for i in batch))
            return
        for index, stored in outcome.stored.items():
            self._settle(batch[index], result=stored)
        for index, error in outcome.refused.items():
            self._settle(batch[index], exc=error)
        # Sessions another transaction holds: alone, in order, outside the statement slots.
        busy: dict[str, list[_Item]] = {}
        for index in outcome.busy:
            busy.setdefault(batch[index].request.session_id, []).append(batch[index])
        for items in busy.values():
            for item in items:
                item.handed_off = True
            self._spawn(self._alone_in_order(items))


async def _settled(future: asyncio.Future[Stored]) -> None:
    """Wait for *future* whatever happens to the waiting task; a cancellation received
    meanwhile is raised once the future is done."""
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    if not future.cancelled():
        future.exception()  # retrieved, so that an error the caller will not see is not reported
    if cancelled is not None:
        raise cancelled
