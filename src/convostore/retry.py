"""Retrying transient database failures.

A failure is transient when the server or the connection, not the statement, was at fault:
the connection dropped, the server is shutting down or starting, a serialization failure
or deadlock rolled the transaction back, or no connection could be had in time. Retrying
writes is safe because every append carries client-generated message ids: a batch whose
acknowledgement was lost is recognised on the retry and not stored twice.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass

import asyncpg

# SQLSTATEs after which the transaction is known to have been rolled back.
_ROLLED_BACK = frozenset({"40001", "40P01"})
# Server not available right now: shutting down, crashed, starting, out of connections.
_SERVER_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03", "53300", "53400"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter.

    ``attempts`` counts the first try; ``deadline`` (seconds) bounds the whole call,
    waiting included. ``RetryPolicy(attempts=1)`` disables retries.
    """

    attempts: int = 6
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    deadline: float | None = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, adjusted by ``CONVOSTORE_RETRY_ATTEMPTS`` and
        ``CONVOSTORE_RETRY_DEADLINE`` (seconds; ``0`` means no deadline)."""
        from .errors import ConfigurationError

        policy = cls()
        try:
            if attempts := os.environ.get("CONVOSTORE_RETRY_ATTEMPTS"):
                policy = cls(attempts=max(1, int(attempts)), deadline=policy.deadline)
            if deadline := os.environ.get("CONVOSTORE_RETRY_DEADLINE"):
                policy = cls(attempts=policy.attempts, deadline=float(deadline) or None)
        except ValueError as exc:
            raise ConfigurationError(f"invalid retry setting in the environment: {exc}") from exc
        return policy

    def backoff(self, attempt: int) -> float:
        """Seconds to sleep before retry number *attempt* (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(0, cap)


def is_transient(exc: BaseException) -> bool:
    """Whether *exc* is a failure worth retrying (the statement itself was not at fault)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return (
            state in _ROLLED_BACK
            or state in _SERVER_UNAVAILABLE
            or state.startswith("08")
            or isinstance(exc, asyncpg.PostgresConnectionError)
        )
    if isinstance(exc, asyncpg.InternalClientError):
        # "cannot switch to state ...; another operation is in progress": a connection left
        # mid-protocol by an interrupted call. Nothing was sent; another connection will do.
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "cannot perform operation: another operation is in progress"
        # after a dropped socket: the connection, not the query, failed.
        return "closed" in str(exc) or isinstance(exc, asyncpg.ConnectionDoesNotExistError)
    return isinstance(exc, (OSError, ConnectionError, asyncio.TimeoutError))


def surely_not_applied(exc: BaseException) -> bool:
    """Whether a failed statement certainly had no effect (safe to retry anything)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state in _ROLLED_BACK or (state in _SERVER_UNAVAILABLE and state != "57P01")
    return isinstance(exc, (ConnectionRefusedError, asyncio.TimeoutError))
