"""Timeouts from the caller's side: what a caller is told when a statement runs out of time,
and what the server does with a statement its client gave up on.

The faults are injected (a lock held from another connection, cancel requests lost on the
way), never waited for: the verdicts do not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from convostore import ConvostoreError, PostgresSessionStore, RetryPolicy, StoreTimeout

from ._chaos import TcpProxy

# A call's deadline: the attempt that waits on the lock gives up after it.
DEADLINE = 1.0


@pytest.fixture
def proxy(database_url: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy.to(database_url)
    try:
        yield proxy
    finally:
        proxy.close()


async def _migrated(database_url: str, schema_name: str) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name):
        pass


class Blocker:
    """A connection of its own that holds a session's row lock in an open transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock(self, schema: str, session_id: str) -> None:
        await self.conn.execute("BEGIN")
        await self.conn.execute(f'SELECT 1 FROM "{schema}".agent_sessions WHERE id = $1 FOR UPDATE', session_id)

    async def waiting(self) -> list[int]:
        """The backends waiting for this connection's locks."""
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        )
        return [r["pid"] for r in rows]

    async def until_gone(self, pids: list[int], what: str) -> None:
        """Wait until none of *pids* runs a statement any more. Bounded only so that a broken
        build fails instead of hanging: the statements end within a second when it works."""
        for _ in range(600):
            running = await self.conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) AND state = 'active'", pids
            )
            if running == 0:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"{what}: the statement still runs on the server 30 s after its caller gave up")


@pytest.fixture
async def blocker(database_url: str) -> AsyncIterator[Blocker]:
    conn = await asyncpg.connect(database_url)
    try:
        yield Blocker(conn)
    finally:
        await conn.close()


async def test_an_append_that_times_out_is_stopped_by_the_server_not_stored_later(
    database_url: str, schema_name: str, proxy: TcpProxy, blocker: Blocker
) -> None:
    """The caller gives up on an append blocked by a lock, and its request to cancel the
    statement is lost: the server stops the statement itself (its statement timeout is the
    call's), so the append is not stored when the lock frees, and the caller's retry with the
    same id stores it once."""
    await _migrated(database_url, schema_name)
    policy = RetryPolicy(deadline=DEADLINE)
    async with PostgresSessionStore(proxy.url, schema=schema_name, retry=policy) as store:
        session = await store.create_session("u", "a")
        await blocker.lock(schema_name, session.id)
        proxy.lose_cancels = True
        with pytest.raises(StoreTimeout):
            await store.add_message(session.id, "user", "blocked", message_id="m-1")
        # Usually the caller gives up first and its cancel request is lost; on a busy machine
        # the server's own timeout may fire first (no cancel sent). Either way the server
        # stops the statement, which is what is checked below.
        proxy.lose_cancels = False
        await blocker.until_gone(await blocker.waiting(), "the timed-out append")
        await blocker.conn.execute("ROLLBACK")
        assert await store.get_messages(session.id) == [], "the append the caller was told failed was stored"
        await store.add_message(session.id, "user", "blocked", message_id="m-1")
        assert [m.id for m in await store.get_messages(session.id)] == ["m-1"]


@pytest.mark.single_node  # the blocked statement is watched with pg_blocking_pids, which sees one node
async def test_a_failure_while_releasing_a_connection_is_a_convostore_error(
    database_url: str, schema_name: str, proxy: TcpProxy, blocker: Blocker
) -> None:
    """Without a server-side bound (statement_timeout switched off, as a pooler in front of
    the server may leave it), a lost cancel request leaves the statement running: releasing
    the connection gives up waiting for the server's confirmation. The caller is told
    :class:`StoreTimeout` (outcome unknown), not a bare ``TimeoutError``; the statement
    commits once the lock frees, and the caller's retry with the same id does not store a
    second copy."""
    await _migrated(database_url, schema_name)
    policy = RetryPolicy(deadline=DEADLINE)
    unbounded: dict[str, Any] = {"server_settings": {"statement_timeout": "0"}}
    async with PostgresSessionStore(proxy.url, schema=schema_name, retry=policy, connect_kwargs=unbounded) as store:
        session = await store.create_session("u", "a")
        await blocker.lock(schema_name, session.id)
        proxy.lose_cancels = True
        with pytest.raises(ConvostoreError) as raised:
            await store.add_message(session.id, "user", "blocked", message_id="m-1")
        assert isinstance(raised.value, StoreTimeout), raised.value
        assert "may have committed" in str(raised.value)
        assert proxy.cancels_lost >= 1, "the fault was not injected: no cancel request was sent"
        proxy.lose_cancels = False
        still_running = await blocker.waiting()
        assert still_running, "the statement was expected to outlive its caller here"
        await blocker.conn.execute("ROLLBACK")
        await blocker.until_gone(still_running, "the abandoned append")
        await store.add_message(session.id, "user", "blocked", message_id="m-1")
        assert [m.id for m in await store.get_messages(session.id)] == ["m-1"]


async def _server_timeout(url: str, schema: str, **options: Any) -> str:
    """``statement_timeout`` as a connection of a store built with *options* sees it."""
    store = PostgresSessionStore(url, schema=schema, **options)
    async with store, store.pool.acquire() as conn:
        return str(await conn.fetchval("SHOW statement_timeout"))


async def test_the_server_bounds_statements_without_a_statement_per_call(database_url: str, schema_name: str) -> None:
    """The server's statement timeout is the store's (the shorter of the command timeout and
    the call's deadline), given when the connection opens: no statement on the hot path."""
    await _migrated(database_url, schema_name)
    assert await _server_timeout(database_url, schema_name, command_timeout=2.5) == "2500ms"
    policy = RetryPolicy(deadline=1.5)
    assert await _server_timeout(database_url, schema_name, command_timeout=2.5, retry=policy) == "1500ms"
    mine = {"server_settings": {"statement_timeout": "7s"}}
    assert await _server_timeout(database_url, schema_name, connect_kwargs=mine) == "7s"
