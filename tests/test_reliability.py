"""Reliability short of chaos: cancellation, timeouts, retries and what they log."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from convostore import (
    PostgresSessionStore,
    RetryPolicy,
    StoreTimeout,
    StoreUnavailable,
)
from convostore._crypto import SealedTenants
from convostore._failures import Failure, classify

from ._chaos import TcpProxy
from .conftest import assert_no_idle_in_transaction
from .test_isolation import roles  # noqa: F401 (a fixture: the schema, and a role under row-level security)


@pytest.mark.parametrize("coalesce", [True, False])
async def test_cancellation_at_random_points_of_1000_appends(
    database_url: str, schema_name: str, coalesce: bool
) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name, max_size=10, coalesce_appends=coalesce) as store:
        sessions = [(await store.create_session("u", "a")).id for _ in range(10)]
        acked: set[str] = set()

        async def append(i: int) -> None:
            batch = [{"role": "user", "content": f"{i}/{j}", "id": f"{i}-{j}"} for j in range(3)]
            await store.add_messages(sessions[i % 10], batch)
            acked.add(str(i))

        tasks = [asyncio.create_task(append(i)) for i in range(1000)]
        for task in tasks:
            if random.random() < 0.5:
                await asyncio.sleep(random.choice([0, 0, 0.0005, 0.002]))
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        assert 0 < cancelled < 1000
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
        await asyncio.sleep(0.2)  # let statements already sent finish
        stored: dict[str, set[str]] = {}
        for sid in sessions:
            for m in await store.get_messages(sid):
                stored.setdefault(m.id.split("-")[0], set()).add(m.id)
        assert all(len(ids) == 3 for ids in stored.values()), "a cancelled batch was partly written"
        assert acked <= set(stored), "an acknowledged batch is missing"
        assert store.pool.get_idle_size() == store.pool.get_size(), "a connection was leaked"
    await assert_no_idle_in_transaction(database_url, schema_name)


async def _migrated(database_url: str, schema_name: str) -> None:
    """Migrate (and, on a Citus coordinator, distribute) the schema with the default timeouts:
    the tests below bound the calls, not the schema's creation, which on a Citus cluster
    takes statements of more than half a second (functions created on every node)."""
    async with PostgresSessionStore(database_url, schema=schema_name):
        pass


async def test_statement_deadline_raises_store_timeout_and_leaves_nothing_open(
    database_url: str, schema_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _migrated(database_url, schema_name)
    async with PostgresSessionStore(database_url, schema=schema_name, command_timeout=0.5) as store:
        session = await store.create_session("u", "a")
        blocker = await asyncpg.connect(database_url)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute(f'SELECT 1 FROM "{schema_name}".agent_sessions WHERE id = $1 FOR UPDATE', session.id)
            with caplog.at_level(logging.WARNING, logger="convostore"), pytest.raises(StoreTimeout):
                await store.add_message(session.id, "user", "blocked")
            # A statement deadline is the caller's: it is not retried.
            assert "retry" not in caplog.text
            await tx.rollback()
        finally:
            await blocker.close()
        assert [m.content for m in await store.add_messages(session.id, [{"role": "user", "content": "ok"}])] == ["ok"]
        assert [m.content for m in await store.get_messages(session.id)] == ["ok"]
    await assert_no_idle_in_transaction(database_url, schema_name)


async def test_pool_exhaustion_within_the_deadline_is_retried_then_store_unavailable(
    database_url: str, schema_name: str
) -> None:
    policy = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02, deadline=2.0)
    await _migrated(database_url, schema_name)
    async with PostgresSessionStore(
        database_url, schema=schema_name, min_size=1, max_size=1, acquire_timeout=0.1, retry=policy
    ) as store:
        session = await store.create_session("u", "a")
        held = await store.pool.acquire()
        try:
            with pytest.raises(StoreUnavailable) as raised:
                await store.get_messages(session.id)
            assert raised.value.__cause__ is not None
        finally:
            await store.pool.release(held)
        assert await store.get_messages(session.id) == []


async def test_retries_are_logged_without_password_or_content(caplog: pytest.LogCaptureFixture) -> None:
    policy = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02, deadline=5.0)
    store = PostgresSessionStore("postgresql://alice:s3cret-pw@127.0.0.1:1/db", retry=policy)
    with caplog.at_level(logging.DEBUG, logger="convostore"), pytest.raises(StoreUnavailable) as raised:
        await store.connect()
    text = caplog.text + str(raised.value)
    assert "retry" in caplog.text
    assert "s3cret-pw" not in text
    assert "alice:***@127.0.0.1:1" in text


@pytest.mark.parametrize(
    "marker",
    [
        pytest.param(b"COMMIT", id="a-migration-committed-unacknowledged"),
        pytest.param(b"convostore_migrations (version, name)", id="a-migration-cut-short"),
    ],
)
@pytest.mark.parametrize("how", ["connect", "migrate"])
async def test_migrating_is_retried_after_a_lost_connection(
    database_url: str, schema_name: str, marker: bytes, how: str
) -> None:
    """Every migration runs in its own transaction and is skipped once recorded, so a
    connection lost while migrating a fresh schema (after a migration committed, or in the
    middle of one) is retried within the call's deadline, as any other call is."""
    proxy = TcpProxy.to(database_url)
    try:
        proxy.lose_reply_to(marker)
        store = PostgresSessionStore(proxy.url, schema=schema_name, apply_migrations=how == "connect" or None)
        async with store:
            if how == "migrate":
                assert await store.migrate()
            assert proxy.replies_lost == 1, "the fault was not injected"
            assert all(m.applied_at is not None for m in await store.migration_status())
            session = await store.create_session("u", "a")
            await store.add_message(session.id, "user", "hello")
            assert [m.content for m in await store.get_messages(session.id)] == ["hello"]
    finally:
        proxy.close()


@pytest.mark.parametrize("as_role", [False, True], ids=["as-owner", "as-role-under-row-level-security"])
async def test_a_created_session_whose_acknowledgement_was_lost_is_returned_on_the_retry(
    roles: tuple[str, str],  # noqa: F811
    database_url: str,
    schema_name: str,
    as_role: bool,
) -> None:
    """The session is created, the reply is lost with the connection, and the retry finds the
    id (generated by the store) taken: it reads the session back and returns it, once. As the
    owner the INSERT commits alone, so its reply is the one lost; as a role under row-level
    security it runs in the scope's transaction, so the COMMIT's is, and the read back must
    not run in that (by then aborted) transaction."""
    url = roles[1] if as_role else database_url
    marker = b"COMMIT" if as_role else b"agent-whose-reply-is-lost"
    proxy = TcpProxy.to(url)
    try:
        async with PostgresSessionStore(proxy.url, schema=schema_name, tenant="A") as store:
            assert store._scope.runner.row_security is as_role
            proxy.lose_reply_to(marker)
            session = await store.create_session("alice", "agent-whose-reply-is-lost", {"k": 1})
            assert proxy.replies_lost == 1, "the fault was not injected"
            assert (session.user_id, session.agent_name, session.metadata) == (
                "alice",
                "agent-whose-reply-is-lost",
                {"k": 1},
            )
            mine = await store.get_user_sessions("alice")
            assert [s.id for s in mine if s.agent_name == "agent-whose-reply-is-lost"] == [session.id]
    finally:
        proxy.close()
    await assert_no_idle_in_transaction(database_url, schema_name)


def test_failures_are_classified_by_exception_class() -> None:
    class Closed:
        def is_closed(self) -> bool:
            return True

    class Open:
        def is_closed(self) -> bool:
            return False

    conn: Any = Open()
    assert classify(asyncpg.exceptions.SerializationError("x"), conn) is Failure.ROLLED_BACK
    assert classify(asyncpg.exceptions.DeadlockDetectedError("x"), conn) is Failure.ROLLED_BACK
    assert classify(asyncpg.exceptions.AdminShutdownError("x"), conn) is Failure.CONNECTION_LOST
    assert classify(ConnectionResetError(), conn) is Failure.CONNECTION_LOST
    assert classify(asyncpg.exceptions.QueryCanceledError("x"), conn) is Failure.TIMED_OUT
    assert classify(TimeoutError(), conn) is Failure.TIMED_OUT
    assert classify(asyncpg.exceptions.InterfaceError("x"), conn) is Failure.STATEMENT
    assert classify(asyncpg.exceptions.InterfaceError("x"), Closed()) is Failure.CONNECTION_LOST  # type: ignore[arg-type]
    # Before a connection was had, nothing was sent: always safe to retry.
    assert classify(asyncpg.exceptions.CannotConnectNowError("x")) is Failure.NOT_SENT
    assert classify(ConnectionRefusedError()) is Failure.NOT_SENT
    assert classify(TimeoutError()) is Failure.NOT_SENT
    assert classify(asyncpg.exceptions.CheckViolationError("x"), conn) is Failure.STATEMENT
    assert classify(asyncpg.exceptions.UniqueViolationError("x"), conn) is Failure.STATEMENT
    assert classify(ValueError("x"), conn) is Failure.STATEMENT


async def test_a_pooled_connection_keeps_its_memory_over_many_calls(
    store: PostgresSessionStore, database_url: str
) -> None:
    """A pooled connection serves one call after another for hours: its server process must
    not grow with each. On distributed tables the calls run on the node holding the session,
    where Citus 13.2.2 added a copy of a reused generic plan's local plan to it on every run
    (about 144 KB per append, 44 KB per read of the messages, some 40 KB per statement on the
    session row): so the calls are made there, through a store connected straight to that
    node."""
    session = await store.create_session("u", "a")
    url = database_url
    if store._scope.runner.distributed:
        async with store.pool.acquire() as conn:
            node = await conn.fetchrow(
                "SELECT nodename, nodeport FROM pg_dist_shard_placement "
                "WHERE shardid = get_shard_id_for_distribution_column($1::regclass, $2::text)",
                f'"{store.schema}".agent_sessions',
                session.id,
            )
        assert node is not None
        parts = urlsplit(database_url)
        user = parts.netloc.rpartition("@")[0]  # with its password, if any
        url = urlunsplit(parts._replace(netloc=f"{user + '@' if user else ''}{node['nodename']}:{node['nodeport']}"))
    memory = "SELECT sum(total_bytes) FROM pg_backend_memory_contexts"
    async with PostgresSessionStore(
        url, schema=store.schema, min_size=1, max_size=1, apply_migrations=None, coalesce_appends=False
    ) as on_node:
        # A node holds none of the coordinator's own tables (the sealed-tenant marker among
        # them): this store is told that the tenant is not sealed, as the coordinator knows.
        on_node._scope.runner.loop_local("sealed_tenants", SealedTenants)._sealed[on_node.tenant] = False

        async def calls(n: int) -> None:
            for i in range(n):
                await on_node.add_message(session.id, "user", f"m{i}")
                assert (await on_node.get_messages(session.id, limit=20))[-1].content == f"m{i}"
                assert (await on_node.update_metadata(session.id, {"round": i})).metadata["round"] == i

        await calls(30)
        async with on_node.pool.acquire() as conn:
            before = await conn.fetchval(memory)
        await calls(300)
        async with on_node.pool.acquire() as conn:
            grown = await conn.fetchval(memory) - before
    assert grown < 4 * 1024 * 1024, f"the connection's server process grew by {grown / 1024:.0f} KB over 300 rounds"
