"""Attempts within a deadline: each call's attempts share what is left of its deadline (its
pool, its connection and its statement each get the rest, never the full timeouts again:
psycopg_pool's ``AttemptWithBackoff`` is the model), and wait out a backoff between them;
and the settling of a cancelled caller's write."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from ._failures import Failure, classify, describe, is_closed, translate
from ._types import Connection
from .errors import StoreTimeout, StoreUnavailable
from .retry import RetryPolicy

logger = logging.getLogger("convostore")

T = TypeVar("T")

# How long releasing a connection waits for the server to confirm a cancelled statement
# before the connection is terminated instead.
CANCEL_WAIT = 2.0

# Failures of getting a connection that are retried: nothing was sent, or preparing a new pool
# (which is safe to repeat) lost its connection or was rolled back.
RETRIED_WHILE_ACQUIRING = frozenset({Failure.NOT_SENT, Failure.CONNECTION_LOST, Failure.ROLLED_BACK})


def within(timeout: float | None, budget: float | None) -> float | None:
    if budget is None:
        return timeout
    if timeout is None:
        return budget
    return min(timeout, budget)


def milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


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


class AttemptFailed(Exception):
    """Internal: an attempt failed with *failure*; ``__cause__`` is the driver error."""

    def __init__(self, failure: Failure, conn: Connection | None) -> None:
        super().__init__(failure.value)
        self.failure = failure
        self.conn = conn


def failed_on(exc: Exception, conn: Connection) -> AttemptFailed:
    """The failure of an attempt that raised *exc* on *conn*, which is terminated if it may be
    left unusable."""
    failure = classify(exc, conn)
    if failure is Failure.CONNECTION_LOST and not is_closed(conn):
        # The connection may be dead or stuck mid-protocol: terminate it so that the pool
        # replaces it rather than handing it out again (the reset hook is a no-op). Never
        # after a timeout: asyncpg has asked the server to cancel the statement, and
        # closing the socket instead would let a statement blocked on a lock run (and
        # commit) once the lock is free, after its caller was told it failed.
        with contextlib.suppress(Exception):
            conn.terminate()
    failed = AttemptFailed(failure, conn)
    failed.__cause__ = exc
    return failed


class _Calls(Protocol):
    """What attempts need of the runner making them."""

    retry: RetryPolicy

    @property
    def url(self) -> str | None: ...

    def scrub(self, text: str) -> str: ...

    def deadline(self) -> float | None: ...


class Attempts:
    """The bookkeeping of one call's attempts: its deadline, its count, its backoff."""

    def __init__(self, runner: _Calls, what: str, session_id: str | None, deadline: float | None) -> None:
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

    async def failed(self, failed: AttemptFailed, *, retry: bool) -> None:
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
