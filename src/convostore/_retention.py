"""Retention: deleting idle and expired sessions in batches, erasing a user, and the
background :class:`Sweeper`.

The sweeper is given what to call (a callback), not a store: retention is a job built on
the store, and the store only starts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from . import _validate as check
from ._scope import Scope
from .errors import ConvostoreError, InvalidIdentifier, InvalidInput

logger = logging.getLogger("convostore.cleanup")

__all__ = ["ErasureReport", "Sweeper"]


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What :meth:`PostgresSessionStore.delete_user <convostore.PostgresSessionStore.delete_user>` removed."""

    user_id: str
    sessions: int
    messages: int


async def _delete_in_batches(
    s: Scope, what: str, sql: str, args: tuple[Any, ...], on_batch: Callable[[int], None] | None, all_tenants: bool
) -> int:
    total = 0
    while True:
        rows = await s.write(what, lambda c: c.fetch(sql, *args), all_tenants=all_tenants)
        total += len(rows)
        if on_batch is not None and rows:
            on_batch(len(rows))
        # An empty batch means nothing eligible is left but rows that live writers (or
        # another sweeper) hold; those are not idle, or will be deleted by their holder. A
        # short batch does not: on distributed tables (no SKIP LOCKED) a batch whose rows
        # another sweeper deleted while it waited comes back short with more to do.
        if not rows:
            return total


async def idle_cutoff(s: Scope, older_than: timedelta | float) -> datetime:
    """The store's ``idle_cutoff`` (documented there)."""
    age = check.duration(older_than, "older_than")
    cutoff = await s.run("idle_cutoff", lambda c: c.fetchval(s.queries.idle_cutoff, age))
    assert isinstance(cutoff, datetime)
    return cutoff


async def _cutoff(s: Scope, older_than: timedelta | float | None, cutoff: datetime | None) -> datetime:
    if (older_than is None) == (cutoff is None):
        raise InvalidInput("give older_than or cutoff (exactly one)")
    if cutoff is not None:
        if not isinstance(cutoff, datetime) or cutoff.tzinfo is None:
            raise InvalidInput("cutoff must be a timezone-aware datetime")
        return cutoff
    assert older_than is not None
    return await idle_cutoff(s, older_than)


async def delete_idle_sessions(
    s: Scope,
    older_than: timedelta | float | None,
    cutoff: datetime | None,
    user_id: str | None,
    agent_name: str | None,
    all_tenants: bool,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> int:
    """The store's ``delete_idle_sessions`` (documented there)."""
    size = check.batch_size(batch_size)
    args = (
        await s.tenant_for(all_tenants),
        await _cutoff(s, older_than, cutoff),
        s.acting_user(user_id),
        check.optional_identifier(agent_name, "agent_name"),
        size,
        s.actor,
    )
    return await _delete_in_batches(s, "delete_idle_sessions", s.queries.delete_idle_batch, args, on_batch, all_tenants)


async def count_idle_sessions(
    s: Scope,
    older_than: timedelta | float | None,
    cutoff: datetime | None,
    user_id: str | None,
    agent_name: str | None,
    all_tenants: bool,
) -> int:
    """The store's ``count_idle_sessions`` (documented there)."""
    args = (
        await s.tenant_for(all_tenants),
        await _cutoff(s, older_than, cutoff),
        s.acting_user(user_id),
        check.optional_identifier(agent_name, "agent_name"),
    )
    count = await s.run(
        "count_idle_sessions", lambda c: c.fetchval(s.queries.count_idle, *args), all_tenants=all_tenants
    )
    return int(count)


async def delete_expired_sessions(
    s: Scope, all_tenants: bool, batch_size: int, on_batch: Callable[[int], None] | None
) -> int:
    """The store's ``delete_expired_sessions`` (documented there)."""
    size = check.batch_size(batch_size)
    args = (await s.tenant_for(all_tenants), size, s.user, s.actor)
    sql = s.queries.delete_expired_batch
    return await _delete_in_batches(s, "delete_expired_sessions", sql, args, on_batch, all_tenants)


async def delete_user(
    s: Scope, user_id: str | None, batch_size: int, on_batch: Callable[[int], None] | None
) -> ErasureReport:
    """The store's ``delete_user`` (documented there)."""
    uid = s.acting_user(user_id)
    if uid is None:
        raise InvalidIdentifier("user_id must be given")
    size = check.batch_size(batch_size)
    sessions = messages = 0
    while True:
        row = await s.write(
            "delete_user", lambda c: c.fetchrow(s.queries.delete_user_batch, s.tenant, uid, size, s.actor)
        )
        assert row is not None
        sessions += row["sessions"]
        messages += row["messages"]
        if on_batch is not None and row["sessions"]:
            on_batch(row["sessions"])
        if row["sessions"] < size:
            return ErasureReport(uid, sessions, messages)


class _Expires(Protocol):
    def delete_expired_sessions(self, *, batch_size: int = ...) -> Awaitable[int]: ...


class Sweeper:
    """A background task that deletes expired sessions every *interval* seconds.

    *sweep* deletes what is expired now and returns how many sessions, called with
    ``batch_size=`` (a store's ``delete_expired_sessions``); a store itself is accepted too.
    Several processes may sweep the same database at once: batches skip rows another
    sweeper holds, so each session is deleted once. Failures are logged and the sweeper
    carries on at the next interval.
    """

    def __init__(
        self, sweep: Callable[..., Awaitable[int]] | _Expires, interval: float, *, batch_size: int = 1000
    ) -> None:
        if interval <= 0:
            raise InvalidInput("interval must be positive")
        self._sweep: Callable[..., Awaitable[int]] = sweep.delete_expired_sessions if not callable(sweep) else sweep
        self._interval = interval
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None
        self.deleted = 0
        """Sessions this sweeper has deleted so far."""

    @property
    def running(self) -> bool:
        """Whether the background task is alive."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start sweeping in the background (idempotent)."""
        if not self.running:
            self._task = asyncio.create_task(self._loop(), name="convostore-sweeper")

    async def stop(self) -> None:
        """Stop sweeping and wait for the task to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def sweep_once(self) -> int:
        """Delete what is expired now; return how many sessions."""
        count = await self._sweep(batch_size=self._batch_size)
        self.deleted += count
        if count:
            logger.info("swept %d expired sessions", count)
        return count

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except ConvostoreError as exc:
                logger.warning("sweep failed, retrying in %.1fs: %s", self._interval, exc)
            await asyncio.sleep(self._interval)
