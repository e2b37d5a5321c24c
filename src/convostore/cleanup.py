"""Retention helpers: the seed's ``cleanup_old_sessions`` and the background :class:`Sweeper`."""

from __future__ import annotations

import logging
from datetime import timedelta

from ._retention import Sweeper
from .errors import InvalidInput
from .store import PostgresSessionStore

logger = logging.getLogger("convostore.cleanup")

__all__ = ["Sweeper", "cleanup_old_sessions"]


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
