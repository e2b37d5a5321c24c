"""The retry policy: how long a call may keep trying, and how long it waits between attempts.

A call is retried only after a failure of the connection or the server, never of the
statement itself (see :mod:`convostore._runner` for the classification). Retrying writes is
safe because every append carries client-generated message ids: a batch whose
acknowledgement was lost is recognised on the retry and not stored twice.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass

from .errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, bounded by a deadline.

    ``deadline`` (seconds) bounds the whole call, waiting and every attempt included: each
    attempt gets what is left of it, never the full timeouts again. ``attempts`` optionally
    caps the number of tries as well (``None``: as many as fit in the deadline, so that a
    server restart shorter than the deadline fails no call). ``RetryPolicy(attempts=1)``
    disables retries. At least one of the two bounds must be set.
    """

    attempts: int | None = None
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    deadline: float | None = 30.0

    def __post_init__(self) -> None:
        if self.attempts is not None and (isinstance(self.attempts, bool) or self.attempts < 1):
            raise ConfigurationError(f"RetryPolicy.attempts must be a positive int or None, got {self.attempts!r}")
        if self.deadline is not None and not (math.isfinite(self.deadline) and self.deadline > 0):
            raise ConfigurationError(f"RetryPolicy.deadline must be positive seconds or None, got {self.deadline!r}")
        if self.attempts is None and self.deadline is None:
            raise ConfigurationError("RetryPolicy needs a deadline or a number of attempts (else it retries forever)")
        for name in ("initial_backoff", "max_backoff", "multiplier"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"RetryPolicy.{name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, adjusted by ``CONVOSTORE_RETRY_ATTEMPTS`` (``0`` or unset: bounded
        by the deadline only) and ``CONVOSTORE_RETRY_DEADLINE`` (seconds; ``0`` means none)."""
        default = cls()
        attempts, deadline = default.attempts, default.deadline
        try:
            if text := os.environ.get("CONVOSTORE_RETRY_ATTEMPTS"):
                attempts = int(text) or None
            if text := os.environ.get("CONVOSTORE_RETRY_DEADLINE"):
                deadline = float(text) or None
        except ValueError as exc:
            raise ConfigurationError(f"invalid retry setting in the environment: {exc}") from exc
        return cls(attempts=attempts, deadline=deadline)

    def backoff(self, attempt: int) -> float:
        """Seconds to sleep before retry number *attempt* (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(attempt - 1, 64))
        return random.uniform(0, cap)
