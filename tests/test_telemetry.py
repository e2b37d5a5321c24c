"""OpenTelemetry: a span and metrics for every store call, and the size of coalesced batches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from convostore import NewMessage, PostgresSessionStore, SessionNotFound

_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def providers() -> None:
    """The SDK's providers (OpenTelemetry allows one per process: another test module may
    have set the tracer's already), with this module's exporter and reader."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    assert not isinstance(metrics.get_meter_provider(), MeterProvider), "only this module sets the meter provider"
    metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))


def _points(name: str) -> list[Any]:
    data = _READER.get_metrics_data()
    return [
        point
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


async def test_every_store_call_is_a_span_with_its_session_and_rows(store: PostgresSessionStore) -> None:
    _EXPORTER.clear()
    session = await store.create_session("u", "a")
    await store.add_messages(session.id, [NewMessage("user", "hi"), NewMessage("assistant", "hello")])
    assert len(await store.get_messages(session.id)) == 2
    with pytest.raises(SessionNotFound):
        await store.add_messages("missing", [NewMessage("user", "x")])
    spans = {s.name: s for s in _EXPORTER.get_finished_spans()}
    read = spans["convostore get_messages"]
    assert read.attributes is not None
    assert read.attributes["convostore.session_id"] == session.id
    assert read.attributes["convostore.rows"] == 2
    assert read.attributes["convostore.retries"] == 0
    assert read.status.is_ok
    assert "convostore add_messages" in spans
    durations = {p.attributes["operation"] for p in _points("convostore.operation.duration")}
    assert {"get_messages", "add_messages", "create_session"} <= durations


async def test_coalesced_batches_are_measured(store: PostgresSessionStore) -> None:
    await asyncio.gather(*(store.add_messages(f"s{i}", [NewMessage("user", "x")], user_id="u") for i in range(40)))
    sizes = _points("convostore.append.batch_size")
    assert sizes
    assert sum(p.sum for p in sizes) >= 40
