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
from typing import Protocol

from .errors import ConvostoreError, InvalidInput

logger = logging.getLogger("convostore.cleanup")

__all__ = ["Sweeper"]


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
