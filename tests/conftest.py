"""Shared fixtures: a real PostgreSQL, and one fresh schema per test.

The server is ``$DATABASE_URL`` when set (``./dev test`` sets it to the local server when one
answers on 127.0.0.1:5432), else the embedded PostgreSQL. Tests never skip for want of a
server: the embedded one is always there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from agents import set_tracing_disabled

from convostore import PostgresSessionStore
from convostore.embedded import embedded_url

# The Agents SDK would export traces of the tests' runs (and warn at exit without a key).
set_tracing_disabled(True)

DISTRIBUTED = os.environ.get("CONVOSTORE_DISTRIBUTE", "").lower() in ("1", "true", "yes")


def pytest_report_header() -> str:
    if DISTRIBUTED:
        return "convostore: tables distributed on the Citus coordinator at DATABASE_URL (CONVOSTORE_DISTRIBUTE=1)"
    return "convostore: single-node tables"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not DISTRIBUTED:
        return
    skip = pytest.mark.skip(reason="single node only (triggers or per-table statistics of the coordinator)")
    for item in items:
        if item.get_closest_marker("single_node"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def database_url() -> str:
    return os.environ.get("DATABASE_URL") or embedded_url()


@pytest.fixture
def schema_name(database_url: str) -> Iterator[str]:
    """A schema of this test's own, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    drop_schema(database_url, name)


def drop_schema(database_url: str, name: str) -> None:
    """Drop schema *name* and everything in it (from synchronous code)."""
    import asyncio

    async def drop() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


class QueryCounter:
    """Counts statements sent on the store's connections (one per round trip once the
    prepared-statement cache is warm)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, record: Any) -> None:
        self.count += 1

    async def attach(self, conn: asyncpg.Connection) -> None:
        conn.add_query_logger(self)


@pytest.fixture
def query_counter() -> QueryCounter:
    return QueryCounter()


async def assert_no_idle_in_transaction(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        idle = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
            "AND pid <> pg_backend_pid() AND query LIKE $1",
            f'%"{schema}"%',
        )
    finally:
        await conn.close()
    assert idle == 0, f"{idle} connections left idle in transaction"


@pytest.fixture
async def store(
    database_url: str, schema_name: str, query_counter: QueryCounter
) -> AsyncIterator[PostgresSessionStore]:
    s = PostgresSessionStore(
        database_url,
        schema=schema_name,
        min_size=1,
        max_size=20,
        connect_kwargs={"init": query_counter.attach},
    )
    async with s:
        yield s
    await assert_no_idle_in_transaction(database_url, schema_name)
