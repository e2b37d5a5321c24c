"""OpenTelemetry around every store call: a span and metrics (``pip install 'convostore[telemetry]'``).

Without ``opentelemetry-api`` installed this is a no-op that costs one attribute test per
call. With it, each call of the store is a span ``convostore <operation>`` carrying the
session id, the rows returned, the retries and the outcome, and these metrics are recorded:

* ``convostore.operation.duration`` (histogram, seconds), by operation and outcome;
* ``convostore.operation.retries`` (counter), by operation;
* ``convostore.append.batch_size`` (histogram): requests per coalesced append statement.

Where they go (an exporter, a collector) is the application's OpenTelemetry setup.
"""

from __future__ import annotations

import time
from typing import Any

try:  # an optional dependency
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    ENABLED = True
except ImportError:  # installs without the extra
    ENABLED = False


class Call:
    """One store call being measured."""

    __slots__ = ("operation", "span", "started")

    def __init__(self, operation: str, session_id: str | None) -> None:
        self.operation = operation
        self.started = time.perf_counter()
        attributes: dict[str, Any] = {"db.system": "postgresql", "convostore.operation": operation}
        if session_id is not None:
            attributes["convostore.session_id"] = session_id
        self.span = _tracer().start_span(f"convostore {operation}", kind=SpanKind.CLIENT, attributes=attributes)

    def end(self, *, attempts: int, result: Any = None, error: BaseException | None = None) -> None:
        retries = max(attempts - 1, 0)
        outcome = "ok" if error is None else type(error).__name__
        self.span.set_attribute("convostore.retries", retries)
        if isinstance(result, list):
            self.span.set_attribute("convostore.rows", len(result))
        if error is not None:
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, outcome))
        self.span.end()
        labels = {"operation": self.operation, "outcome": outcome}
        _instruments()["duration"].record(time.perf_counter() - self.started, labels)
        if retries:
            _instruments()["retries"].add(retries, {"operation": self.operation})


def start(operation: str, session_id: str | None) -> Call | None:
    """Begin measuring a call (``None`` when OpenTelemetry is not installed)."""
    return Call(operation, session_id) if ENABLED else None


def batch(size: int) -> None:
    """Record the number of requests one coalesced append statement carried."""
    if ENABLED:
        _instruments()["batch"].record(size)


_cache: dict[str, Any] = {}


def _tracer() -> Any:
    # OpenTelemetry's proxies: an application that sets its providers after the first call
    # is still heard.
    if "tracer" not in _cache:
        from ._version import __version__

        _cache["tracer"] = trace.get_tracer("convostore", __version__)
    return _cache["tracer"]


def _instruments() -> dict[str, Any]:
    if "duration" not in _cache:
        meter = metrics.get_meter("convostore")
        _cache["duration"] = meter.create_histogram(
            "convostore.operation.duration", unit="s", description="Duration of store calls, retries included"
        )
        _cache["retries"] = meter.create_counter("convostore.operation.retries", description="Attempts retried")
        _cache["batch"] = meter.create_histogram(
            "convostore.append.batch_size", description="Requests carried by one coalesced append statement"
        )
    return _cache
