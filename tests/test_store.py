"""The core store against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from convostore import (
    InvalidIdentifier,
    InvalidInput,
    InvalidMessage,
    InvalidMetadata,
    NewMessage,
    PostgresSessionStore,
    SessionNotFound,
    StoreClosed,
    Window,
    cleanup_old_sessions,
)

from .conftest import QueryCounter


async def test_create_and_get_session(store: PostgresSessionStore) -> None:
    created = await store.create_session("user_1", "MemoryAgent", {"title": "hello"})
    assert created.user_id == "user_1"
    assert created.agent_name == "MemoryAgent"
    assert created.metadata == {"title": "hello"}
    assert created.created_at.tzinfo is not None
    assert created.created_at.utcoffset() == timedelta(0)
    assert created.messages == ()

    fetched = await store.get_session(created.id)
    assert fetched == created
    assert await store.get_session("no-such-session") is None


async def test_add_message_returns_stored_message_and_bumps_updated_at(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    first = await store.add_message(session.id, "user", "My name is Alice")
    second = await store.add_message(session.id, "assistant", "", tool_calls=[{"id": "call_1", "type": "function"}])
    third = await store.add_message(session.id, "tool", "42", tool_call_id="call_1", message_id="m-3")
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    assert third.id == "m-3"
    assert first.created_at.tzinfo is not None

    fetched = await store.get_session(session.id)
    assert fetched is not None
    assert [m.content for m in fetched.messages] == ["My name is Alice", "", "42"]
    assert fetched.messages[1].tool_calls == [{"id": "call_1", "type": "function"}]
    assert fetched.messages[2].tool_call_id == "call_1"
    assert fetched.messages == (first, second, third)
    assert fetched.updated_at >= third.created_at > session.updated_at or fetched.updated_at > session.updated_at


async def test_add_messages_is_one_atomic_batch(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    stored = await store.add_messages(
        session.id,
        [
            {"role": "user", "content": "hi"},
            NewMessage("assistant", "hello"),
            {"role": "user", "content": "bye"},
        ],
    )
    assert [m.seq for m in stored] == [1, 2, 3]
    # A bad message anywhere in the batch writes nothing.
    with pytest.raises(InvalidMessage):
        await store.add_messages(session.id, [{"role": "user", "content": "ok"}, {"role": "wizard", "content": "x"}])
    assert len(await store.get_messages(session.id)) == 3


async def test_retried_append_is_not_stored_twice(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    batch = [NewMessage("user", "once", id="a1"), NewMessage("assistant", "only once", id="a2")]
    first = await store.add_messages(session.id, batch)
    again = await store.add_messages(session.id, batch)
    assert again == first
    assert [m.id for m in await store.get_messages(session.id)] == ["a1", "a2"]


async def test_reusing_one_id_in_a_new_batch_is_an_error(store: PostgresSessionStore) -> None:
    from convostore import DuplicateMessageId

    session = await store.create_session("u", "a")
    await store.add_message(session.id, "user", "x", message_id="dup")
    with pytest.raises(DuplicateMessageId):
        await store.add_messages(session.id, [NewMessage("user", "y", id="new"), NewMessage("user", "z", id="dup")])
    with pytest.raises(DuplicateMessageId):
        await store.add_message(session.id, "user", "not x", message_id="dup")
    assert (await store.add_message(session.id, "user", "x", message_id="dup")).seq == 1  # a true retry
    with pytest.raises(InvalidMessage):
        await store.add_messages(session.id, [NewMessage("user", "y", id="s"), NewMessage("user", "z", id="s")])
    assert [m.id for m in await store.get_messages(session.id)] == ["dup"]


async def test_ids_are_per_session(store: PostgresSessionStore) -> None:
    a = await store.create_session("u", "a")
    b = await store.create_session("u", "a")
    await store.add_message(a.id, "user", "in a", message_id="same")
    await store.add_message(b.id, "user", "in b", message_id="same")
    assert [m.content for m in await store.get_messages(a.id)] == ["in a"]
    assert [m.content for m in await store.get_messages(b.id)] == ["in b"]


async def test_get_messages_latest_and_backwards_pagination(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await store.add_messages(session.id, [{"role": "user", "content": str(i)} for i in range(50)])
    latest = await store.get_messages(session.id, limit=20)
    assert [m.content for m in latest] == [str(i) for i in range(30, 50)]
    older = await store.get_messages(session.id, limit=20, before_seq=latest[0].seq)
    assert [m.content for m in older] == [str(i) for i in range(10, 30)]
    oldest = await store.get_messages(session.id, limit=20, before_seq=older[0].seq)
    assert [m.content for m in oldest] == [str(i) for i in range(10)]
    assert await store.get_messages(session.id, limit=0) == []
    assert len(await store.get_messages(session.id)) == 50
    assert await store.get_messages("unknown", limit=5) == []


async def test_pop_clear_delete(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await store.add_messages(session.id, [{"role": "user", "content": c} for c in "abc"])
    popped = await store.pop_message(session.id)
    assert popped is not None
    assert popped.content == "c"
    assert [m.content for m in await store.get_messages(session.id)] == ["a", "b"]
    after_pop = await store.add_message(session.id, "user", "d")
    assert after_pop.seq == 4  # seq never reused: still strictly increasing
    assert await store.clear_session(session.id) == 3
    assert await store.pop_message(session.id) is None
    assert await store.get_session(session.id) is not None
    assert await store.delete_session(session.id) is True
    assert await store.delete_session(session.id) is False
    assert await store.get_session(session.id) is None


async def test_concurrent_pops_take_each_message_once(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await store.add_messages(session.id, [{"role": "user", "content": str(i)} for i in range(40)])
    popped = await asyncio.gather(*(store.pop_message(session.id) for _ in range(50)))
    contents = [m.content for m in popped if m is not None]
    assert sorted(contents, key=int) == [str(i) for i in range(40)]
    assert popped.count(None) == 10


async def test_pops_racing_appends_return_a_message_or_none(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await store.add_messages(session.id, [{"role": "user", "content": f"seed-{i}"} for i in range(20)])

    async def append(i: int) -> None:
        await store.add_message(session.id, "user", f"new-{i}")

    results = await asyncio.gather(
        *(store.pop_message(session.id) for _ in range(240)), *(append(i) for i in range(240)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    popped = [r.content for r in results[:240] if r is not None and not isinstance(r, BaseException)]
    left = [m.content for m in await store.get_messages(session.id)]
    assert len(popped) == len(set(popped))
    assert sorted(popped + left) == sorted([f"seed-{i}" for i in range(20)] + [f"new-{i}" for i in range(240)])


async def test_update_metadata_merges(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a", {"a": 1, "nested": {"x": 1}})
    updated = await store.update_metadata(session.id, {"b": 2, "nested": {"y": 2}})
    assert updated.metadata == {"a": 1, "b": 2, "nested": {"y": 2}}
    assert updated.updated_at >= session.updated_at
    with pytest.raises(SessionNotFound):
        await store.update_metadata("missing", {"a": 1})


async def test_thirty_two_concurrent_appenders_get_unique_increasing_seq(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")

    async def writer(w: int) -> list[tuple[int, int]]:
        out = []
        for i in range(25):
            m = await store.add_message(session.id, "user", f"{w}:{i}")
            out.append((i, m.seq))
        return out

    results = await asyncio.gather(*(writer(w) for w in range(32)))
    stored = await store.get_messages(session.id)
    assert len(stored) == 32 * 25
    seqs = [m.seq for m in stored]
    assert seqs == sorted(set(seqs)), "seq must be unique and strictly increasing"
    assert len({m.content for m in stored}) == 32 * 25
    # Each writer's own messages were acknowledged in order and stored in that order.
    for per_writer in results:
        acked = [seq for _, seq in per_writer]
        assert acked == sorted(acked)
    # Commit order: a message acknowledged before another was appended has a lower seq.
    by_content = {m.content: m.seq for m in stored}
    for w, per_writer in enumerate(results):
        for i, seq in per_writer:
            assert by_content[f"{w}:{i}"] == seq


async def test_user_sessions_newest_first_with_keyset_pagination(store: PostgresSessionStore) -> None:
    ids = []
    for i in range(7):
        s = await store.create_session("alice", "a", {"n": i})
        await store.add_message(s.id, "user", f"hello {i}")
        ids.append(s.id)
    await store.create_session("bob", "a")
    page1 = await store.get_user_sessions("alice", limit=3)
    page2 = await store.get_user_sessions("alice", limit=3, before=page1[-1])
    page3 = await store.get_user_sessions("alice", limit=3, before=page2[-1])
    listed = [s.id for s in page1 + page2 + page3]
    assert listed == list(reversed(ids))
    assert [m.content for m in page1[0].messages] == ["hello 6"]
    bare = await store.get_user_sessions("alice", limit=10, with_messages=False)
    assert [s.id for s in bare] == list(reversed(ids))
    assert all(s.messages == () and s.message_count == 1 for s in bare)
    assert await store.get_user_sessions("nobody") == []


async def test_user_sessions_messages_limit(store: PostgresSessionStore) -> None:
    s = await store.create_session("carol", "a")
    await store.add_messages(s.id, [{"role": "user", "content": str(i)} for i in range(10)])
    (listed,) = await store.get_user_sessions("carol", messages_limit=3)
    assert [m.content for m in listed.messages] == ["7", "8", "9"]


async def test_round_trips_per_call(store: PostgresSessionStore, query_counter: QueryCounter) -> None:
    session = await store.create_session("rt", "a")
    for i in range(3):
        s = await store.create_session("rt", "a")
        await store.add_message(s.id, "user", str(i))
    # Warm the prepared-statement cache, then count one call of each.
    await store.add_message(session.id, "user", "warm")
    await store.add_messages(session.id, [{"role": "user", "content": "warm"}, {"role": "user", "content": "up"}])
    await store.get_messages(session.id, limit=20)
    await store.get_messages(session.id, window=Window(turns=2))
    await store.get_user_sessions("rt")
    await store.get_session(session.id)

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "add_message": lambda: store.add_message(session.id, "user", "counted"),
        "add_messages": lambda: store.add_messages(
            session.id, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        ),
        "get_messages": lambda: store.get_messages(session.id, limit=20),
        "get_messages, a window of turns": lambda: store.get_messages(session.id, window=Window(turns=2)),
        "get_messages, a token window": lambda: store.get_messages(session.id, window=Window(tokens=5)),
        "get_user_sessions": lambda: store.get_user_sessions("rt"),
        "get_session": lambda: store.get_session(session.id),
    }
    counted = {}
    for name, call in calls.items():
        before = query_counter.count
        await call()
        counted[name] = query_counter.count - before
    assert counted == dict.fromkeys(calls, 1)


async def test_timestamps_come_from_the_server_in_utc(store: PostgresSessionStore, database_url: str) -> None:
    session = await store.create_session("tz", "a")
    message = await store.add_message(session.id, "user", "x")
    conn = await asyncpg.connect(database_url)
    try:
        server_now = await conn.fetchval("SELECT now()")
    finally:
        await conn.close()
    assert abs(server_now - message.created_at) < timedelta(minutes=1)
    assert message.created_at.tzinfo is not None
    assert message.created_at.astimezone(UTC) == message.created_at


async def test_unknown_session_is_a_typed_error_and_writes_nothing(store: PostgresSessionStore) -> None:
    with pytest.raises(SessionNotFound):
        await store.add_message("does-not-exist", "user", "hello")
    with pytest.raises(SessionNotFound):
        await store.add_messages("does-not-exist", [{"role": "user", "content": "a"}])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"role": "wizard", "content": "x"}, InvalidMessage),
        ({"role": "user", "content": 5}, InvalidMessage),
        ({"role": "user", "content": "x", "tool_calls": [{"f": object()}]}, InvalidMessage),
        ({"role": "user", "content": "x", "tool_calls": {"not": "a list"}}, InvalidMessage),
        ({"role": "user", "content": "x", "tool_calls": [float("nan")]}, InvalidMessage),
        ({"role": "user", "content": "lone \ud800 surrogate"}, InvalidMessage),
        ({"role": "user", "content": "x", "tool_call_id": ""}, InvalidIdentifier),
        ({"role": "user", "content": "x", "tool_call_id": "t" * 256}, InvalidIdentifier),
        ({"role": "user", "content": "x", "message_id": ""}, InvalidIdentifier),
        ({"role": "user", "content": "x", "message_id": "m" * 256}, InvalidIdentifier),
        ({"role": "user", "content": "x", "message_id": "a\x00b"}, InvalidIdentifier),
    ],
)
async def test_bad_messages_are_rejected_and_write_nothing(
    store: PostgresSessionStore, kwargs: dict[str, object], error: type[Exception]
) -> None:
    session = await store.create_session("u", "a")
    with pytest.raises(error):
        await store.add_message(session.id, **kwargs)  # type: ignore[arg-type]
    assert await store.get_messages(session.id) == []
    assert isinstance(error("x"), ValueError)


@pytest.mark.parametrize("bad", ["", "x" * 256, 42, None, "\ud800"])
async def test_bad_ids_are_typed_errors(store: PostgresSessionStore, bad: object) -> None:
    with pytest.raises(InvalidIdentifier):
        await store.create_session(bad, "agent")  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifier):
        await store.create_session("user", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifier):
        await store.get_session(bad)  # type: ignore[arg-type]
    assert await store.get_user_sessions("user") == []


@pytest.mark.parametrize("bad", [[1, 2], {"k": object()}, {"k": float("inf")}, "text", {1: "non-str key"}])
async def test_bad_metadata_is_a_typed_error(store: PostgresSessionStore, bad: object) -> None:
    with pytest.raises(InvalidMetadata):
        await store.create_session("user", "agent", bad)  # type: ignore[arg-type]
    session = await store.create_session("user", "agent", {"keep": True})
    with pytest.raises(InvalidMetadata):
        await store.update_metadata(session.id, bad)  # type: ignore[arg-type]
    fetched = await store.get_session(session.id)
    assert fetched is not None
    assert fetched.metadata == {"keep": True}


NUL_CASES = [
    "a\x00b",
    "\x00",
    "%00 is not a NUL",
    "\ue000 starts with the marker",
    "\ue000\x00%25%00",
    "ends with NUL\x00",
    "naïve 日本語 🎉\x00",
]


@pytest.mark.parametrize("text", NUL_CASES)
async def test_nul_and_marker_strings_round_trip_losslessly(store: PostgresSessionStore, text: str) -> None:
    session = await store.create_session("u", "a", {"note": text, text: "as a key"})
    await store.add_message(
        session.id, "assistant", text, tool_calls=[{"id": "c1", "arguments": text, text: [text]}], raw={"output": text}
    )
    fetched = await store.get_session(session.id)
    assert fetched is not None
    (message,) = fetched.messages
    assert message.content == text
    assert message.tool_calls == [{"id": "c1", "arguments": text, text: [text]}]
    assert message.raw == {"output": text}
    assert fetched.metadata == {"note": text, text: "as a key"}


async def test_plain_sql_readers_see_plain_text(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await store.add_message(session.id, "user", "plain text stays plain")
    content = await store.pool.fetchval(
        f'SELECT content FROM "{store.schema}".conversation_messages WHERE session_id = $1', session.id
    )
    assert content == "plain text stays plain"


async def test_cleanup_old_sessions_deletes_only_idle_ones(store: PostgresSessionStore) -> None:
    old = await store.create_session("u", "a")
    fresh = await store.create_session("u", "a")
    await store.add_message(old.id, "user", "old")
    await store.pool.execute(
        f"UPDATE \"{store.schema}\".agent_sessions SET updated_at = now() - interval '40 days' WHERE id = $1",
        old.id,
    )
    assert await cleanup_old_sessions(store, days_old=30) == 1
    assert await store.get_session(old.id) is None
    assert await store.get_session(fresh.id) is not None
    count = await store.pool.fetchval(
        f'SELECT count(*) FROM "{store.schema}".conversation_messages WHERE session_id = $1', old.id
    )
    assert count == 0


async def test_cleanup_runs_in_bounded_batches(store: PostgresSessionStore) -> None:
    for _ in range(25):
        await store.create_session("u", "a")
    await store.pool.execute(f"UPDATE \"{store.schema}\".agent_sessions SET updated_at = now() - interval '2 days'")
    batches: list[int] = []
    deleted = await store.delete_idle_sessions(timedelta(days=1), batch_size=10, on_batch=batches.append)
    assert deleted == 25
    assert batches == [10, 10, 5]


async def test_a_store_is_usable_at_once_and_closed_after_close(database_url: str, schema_name: str) -> None:
    s = PostgresSessionStore(database_url, schema=schema_name)
    assert await s.get_session("x") is None  # no connect(): the first call opens and migrates
    await s.close()
    with pytest.raises(StoreClosed):
        await s.get_session("x")
    await s.connect()
    assert await s.get_session("x") is None
    await s.close()


async def test_invalid_schema_name_is_rejected() -> None:
    from convostore import ConfigurationError

    with pytest.raises(ConfigurationError):
        PostgresSessionStore("postgresql://x/y", schema='bad"; DROP TABLE x; --')


def _rows_read(plan: Any, table: str) -> int:
    """Rows that scan nodes on *table* produced in an EXPLAIN (ANALYZE, FORMAT JSON) tree."""
    total = 0
    stack = [plan]
    while stack:
        node = stack.pop()
        if node.get("Relation Name") == table and "Scan" in node.get("Node Type", ""):
            total += node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
        stack.extend(node.get("Plans", []))
    return total


@pytest.mark.single_node
async def test_hot_statements_read_only_what_they_need_as_sessions_grow(store: PostgresSessionStore) -> None:
    """Appends and history reads must stay index probes as a session grows: a plan that
    reads the session's whole history made every append slower than the last. Counts the
    message rows each call reads (the transaction's own table statistics), not time."""
    session = await store.create_session("u", "a")
    other = await store.create_session("u", "a")
    for _ in range(5):
        await store.add_messages(session.id, [{"role": "user", "content": "x" * 50} for _ in range(1000)])
    n = 100
    ids = [f"probe-{i}" for i in range(n)]
    t = store.tenant
    rows = (ids, ["user"] * n, ["c"] * n, *[[None] * n] * 5, [2] * n, [None] * n)
    one = ([1] * n, [session.id] * n, [None] * n, [None] * n, ["main"] * n)
    single = (t, session.id, None, False, True, *one, *rows)
    retried = (t, session.id, None, True, True, *one, *rows)
    many = (t, session.id, None, True, False, [1, 2] * (n // 2), [session.id, other.id] * (n // 2), [None] * n,
            [None] * n, ["main"] * n, *rows)  # fmt: skip
    plain = (t, session.id, None, None, 20, "main", False, None, None, False, None)
    cases = [
        (store._scope.queries.append, single, n),
        (store._scope.queries.append, retried, n),
        (store._scope.queries.append, many, n),
        (store._scope.queries.read, plain, 20),
        (store._scope.queries.read, (t, session.id, "u", *plain[3:]), 20),
        # Windows (the last 20 turns of one message each, the last 20 messages' tokens): the
        # rows back to the window's start (and the one before it), then the window.
        (store._scope.queries.read, (t, session.id, None, None, None, "main", False, 20, None, True, None), 42),
        (store._scope.queries.read, (t, session.id, None, None, None, "main", False, None, 20 * 13, True, None), 42),
        (store._scope.queries.read, (t, session.id, None, None, 20, "main", False, None, None, False, 2500), 20),
    ]
    counters = (
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
        f" WHERE relid = '\"{store.schema}\".conversation_messages'::regclass"
    )
    async with store.pool.acquire() as conn:
        for analyzed in (False, True):
            if analyzed:
                await conn.execute(f'ANALYZE "{store.schema}".conversation_messages')
            for sql, args, budget in cases:
                tr = conn.transaction()
                await tr.start()
                try:
                    before = await conn.fetchval(counters)
                    await conn.fetch(sql, *args)
                    read = await conn.fetchval(counters) - before
                finally:
                    await tr.rollback()
                assert read <= 2 * budget, f"read {read} rows of a 5000-message session:\n{sql} {args[:5]}"


@pytest.mark.parametrize(
    "value",
    [4.303167560346458e16, 1e300, -2.5e20, 1e16, 1.5, 1e-7, 10**20, [1e16, "e+ in a string", {"k": 7.1e22}]],
)
async def test_json_numbers_round_trip_exactly(store: PostgresSessionStore, value: Any) -> None:
    """jsonb drops a number's exponent: floats printed as 4.3e+16 must still come back as
    the same float (not a nearby int)."""
    session = await store.create_session("u", "a", {"n": value})
    stored = await store.add_message(session.id, "user", "x", raw={"n": value}, tool_calls=[{"id": "c", "n": value}])
    fetched = await store.get_session(session.id)
    assert fetched is not None
    assert fetched.metadata == {"n": value}
    (message,) = fetched.messages
    assert message == stored
    assert repr(message.raw) == repr({"n": value})
    assert message.tool_calls is not None
    assert repr(message.tool_calls[0]["n"]) == repr(value)


async def test_pages_of_messages_go_both_ways(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    stored = await store.add_messages(session.id, [{"role": "user", "content": f"m{i}"} for i in range(10)])
    first = await store.get_messages(session.id, after_seq=0, limit=4)
    assert [m.content for m in first] == ["m0", "m1", "m2", "m3"]
    second = await store.get_messages(session.id, after_seq=first[-1].seq, limit=4)
    assert [m.content for m in second] == ["m4", "m5", "m6", "m7"]
    back = await store.get_messages(session.id, before_seq=second[0].seq, limit=3)
    assert [m.content for m in back] == ["m1", "m2", "m3"]
    between = await store.get_messages(session.id, after_seq=stored[2].seq, before_seq=stored[5].seq)
    assert [m.content for m in between] == ["m3", "m4"]
    with pytest.raises(InvalidInput):
        await store.get_messages(session.id, after_seq=1, window=Window(turns=2))


async def test_the_tenants_sessions_are_listed_with_filters(store: PostgresSessionStore) -> None:
    a = await store.create_session("alice", "support", {"plan": "pro", "region": "eu"})
    b = await store.create_session("bob", "sales", {"plan": "free"})
    c = await store.create_session("alice", "sales")
    await store.add_messages(a.id, [{"role": "user", "content": "x"}])
    listed = await store.list_sessions()
    assert [s.id for s in listed] == [a.id, c.id, b.id]
    assert listed[0].message_count == 1
    assert [s.id for s in await store.list_sessions(user_id="alice")] == [a.id, c.id]
    assert [s.id for s in await store.list_sessions(agent_name="sales")] == [c.id, b.id]
    assert [s.id for s in await store.list_sessions(metadata={"plan": "pro"})] == [a.id]
    page = await store.list_sessions(limit=2)
    assert [s.id for s in await store.list_sessions(limit=2, before=page[-1])] == [b.id]
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert await store.list_sessions(updated_since=later) == []
    assert [s.id for s in await store.scoped(user="bob").list_sessions()] == [b.id]
    assert await store.scoped(tenant="other").list_sessions() == []
