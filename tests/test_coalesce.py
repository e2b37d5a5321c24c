"""Coalesced appends: shared statements, per-caller results and errors, exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from convostore import DuplicateMessageId, InvalidInput, PostgresSessionStore, SessionNotFound, SessionOwnershipError

from .conftest import QueryCounter


class StatementLog(QueryCounter):
    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []
        self.requests: list[int] = []  # requests per append call

    def __call__(self, record: Any) -> None:
        super().__call__(record)
        self.queries.append(record.query)
        # convostore_append, or convostore_append_sharded on distributed tables.
        if ("convostore_append(" in record.query or "convostore_append_sharded(" in record.query) and len(
            record.args
        ) == 20:
            self.requests.append(len(set(record.args[5])))  # p_reqs: one number per request
        elif record.query.lstrip().startswith("WITH b AS") and "INSERT INTO" in record.query:
            self.requests.append(1)  # the one-statement append of one request (_sql.APPEND_ONE, APPEND_ROWS)


async def test_concurrent_appends_share_statements_and_each_lands_once(database_url: str, schema_name: str) -> None:
    log = StatementLog()
    async with PostgresSessionStore(
        database_url, schema=schema_name, max_size=4, connect_kwargs={"init": log.attach}
    ) as store:
        sessions = [(await store.create_session("u", "a")).id for _ in range(16)]
        before = log.count

        async def writer(w: int) -> list[int]:
            seqs = []
            for i in range(20):
                m = await store.add_message(sessions[w % 16], "user", f"{w}:{i}")
                seqs.append(m.seq)
            return seqs

        results = await asyncio.gather(*(writer(w) for w in range(64)))
        statements = log.count - before
        assert statements < 64 * 20 / 2, f"{statements} statements for {64 * 20} appends: not coalesced"
        assert max(log.requests) > 1, "no call carried more than one caller's request"
        for per_writer in results:
            assert per_writer == sorted(per_writer)
        for sid in sessions:
            stored = await store.get_messages(sid)
            assert len(stored) == 4 * 20
            assert [m.seq for m in stored] == list(range(1, 81)), "per-session seq must be contiguous"
            assert len({m.content for m in stored}) == 80


async def test_a_lone_append_is_sent_at_once_alone(database_url: str, schema_name: str) -> None:
    log = StatementLog()
    async with PostgresSessionStore(database_url, schema=schema_name, connect_kwargs={"init": log.attach}) as store:
        s = await store.create_session("u", "a")
        await store.add_message(s.id, "user", "warms the statement cache and type introspection")
        before = log.count
        await store.add_message(s.id, "user", "alone")
        assert log.count - before == 1
        assert log.requests[-1] == 1


@pytest.mark.single_node
async def test_one_bad_request_does_not_fail_its_neighbours(store: PostgresSessionStore) -> None:
    # A refusal that only the database can make: a trigger rejecting one content.
    await store.pool.execute(
        f"""
        CREATE FUNCTION "{store.schema}".refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.content = 'boom' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_boom BEFORE INSERT ON "{store.schema}".conversation_messages
            FOR EACH ROW EXECUTE FUNCTION "{store.schema}".refuse_boom();
        """
    )
    sessions = [(await store.create_session("u", "a")).id for _ in range(4)]
    await store.add_message(sessions[0], "user", "taken", message_id="dup")

    async def call(i: int) -> Any:
        try:
            if i == 5:
                return await store.add_message(sessions[1], "user", "boom")
            if i == 6:
                return await store.add_message("no-such-session", "user", "x")
            if i == 7:
                return await store.add_message(sessions[0], "user", "again", message_id="dup")
            return await store.add_message(sessions[i % 4], "user", f"ok {i}")
        except Exception as exc:
            return exc

    for _ in range(5):
        results = await asyncio.gather(*(call(i) for i in range(40)))
        assert isinstance(results[5], InvalidInput)
        assert isinstance(results[6], SessionNotFound)
        assert isinstance(results[7], DuplicateMessageId)
        assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i not in (5, 6, 7))
    contents = [m.content for sid in sessions for m in await store.get_messages(sid)]
    assert "boom" not in contents
    assert len(contents) == 1 + 5 * 37


async def test_cancelled_appends_are_whole_or_absent_and_leak_nothing(store: PostgresSessionStore) -> None:
    sessions = [(await store.create_session("u", "a")).id for _ in range(8)]
    acked: list[tuple[str, list[str]]] = []

    async def append(i: int) -> None:
        batch = [{"role": "user", "content": f"{i}-{j}", "id": f"{i}-{j}"} for j in range(3)]
        await store.add_messages(sessions[i % 8], batch)
        acked.append((sessions[i % 8], [b["id"] for b in batch]))

    tasks = [asyncio.create_task(append(i)) for i in range(300)]
    for n, task in enumerate(tasks):
        if n % 3 == 0:
            await asyncio.sleep(0)
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    writer = store._scope.runner.find_local("appends")
    assert writer is not None
    await writer.drain()
    stored: dict[str, list[str]] = {}
    for sid in sessions:
        for m in await store.get_messages(sid):
            stored.setdefault(m.id.split("-")[0], []).append(m.id)
    assert all(len(ids) == 3 for ids in stored.values()), "a batch was partly written"
    for _sid, ids in acked:
        assert ids[0].split("-")[0] in stored
    assert store.pool.get_size() - store.pool.get_idle_size() == 0, "a connection was leaked"


async def test_two_owners_racing_for_one_new_session(store: PostgresSessionStore) -> None:
    async def write(user: str, i: int) -> Any:
        try:
            return await store.add_messages("contested", [{"role": "user", "content": f"{user} {i}"}], user_id=user)
        except SessionOwnershipError as exc:
            return exc

    results = await asyncio.gather(*(write("alice" if i % 2 else "bob", i) for i in range(40)))
    session = await store.get_session("contested")
    assert session is not None
    winner = session.user_id
    for i, result in enumerate(results):
        writer = "alice" if i % 2 else "bob"
        assert isinstance(result, SessionOwnershipError) == (writer != winner)
    assert all(m.content.startswith(winner) for m in session.messages)
    assert len(session.messages) == 20


@pytest.mark.parametrize("coalesce", [True, False])
async def test_same_results_with_and_without_coalescing(database_url: str, schema_name: str, coalesce: bool) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name, coalesce_appends=coalesce) as store:
        s = await store.create_session("u", "a")
        stored = await asyncio.gather(*(store.add_message(s.id, "user", str(i)) for i in range(30)))
        assert sorted(m.seq for m in stored) == list(range(1, 31))
        with pytest.raises(SessionNotFound):
            await store.add_message("missing", "user", "x")
