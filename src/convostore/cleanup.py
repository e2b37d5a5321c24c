"""Retention helpers: the seed's ``cleanup_old_sessions`` and a background sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from .errors import ConvostoreError, InvalidInput
from .store import PostgresSessionStore

logger = logging.getLogger("convostore.cleanup")


async def cleanup_old_sessions(store: PostgresSessionStore, days_old: float = 30, *, batch_size: int = 1000) -> int:
    """Delete sessions not updated in *days_old* days (server time); return how many.

    Deletes in bounded batches that skip sessions live writers hold, so it can run on a
    busy table (from cron: ``convostore cleanup --older-than 30d``).
    """
    if isinstance(days_old, bool) or not isinstance(days_old, (int, float)) or days_old <= 0:
        raise InvalidInput(f"days_old must be a positive number, got {days_old!r}")
    deleted = await store.delete_idle_sessions(timedelta(days=days_old), batch_size=batch_size)
    logger.info("cleaned up %d sessions idle for more than %s days", deleted, days_old)
    return deleted


class Sweeper:
    """A background task that deletes expired sessions every *interval* seconds.

    Several processes may sweep the same database at once: batches skip rows another
    sweeper holds, so each session is deleted once. Failures are logged and the sweeper
    carries on at the next interval.
    """

    def __init__(self, store: PostgresSessionStore, interval: float, *, batch_size: int = 1000) -> None:
        if interval <= 0:
            raise InvalidInput("interval must be positive")
        self._store = store
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
        count = await self._store.delete_expired_sessions(batch_size=self._batch_size)
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
