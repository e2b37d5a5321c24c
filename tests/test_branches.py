"""Branches: forks share their parent's messages, and deleting either side leaves the other whole."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from convostore import (
    BranchConflict,
    BranchExists,
    BranchNotFound,
    InvalidInput,
    NewMessage,
    PostgresSessionStore,
    SessionNotFound,
    SessionOwnershipError,
    export_jsonl,
    import_jsonl,
)
from convostore.openai_agents import PostgresSession


async def _contents(store: PostgresSessionStore, sid: str, branch: str = "main", **kw: Any) -> list[str]:
    return [m.content for m in await store.get_messages(sid, branch=branch, **kw)]


async def _rows(store: PostgresSessionStore) -> int:
    return int(await store.pool.fetchval(f'SELECT count(*) FROM "{store.schema}".conversation_messages'))


async def _talk(store: PostgresSessionStore, sid: str, prefix: str, n: int, branch: str = "main") -> None:
    await store.add_messages(sid, [NewMessage("user", f"{prefix}{i}") for i in range(n)], branch=branch)


async def test_a_fork_shares_its_parents_prefix_without_copying_it(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await _talk(store, session.id, "m", 100)
    before = await _rows(store)
    fork = await store.fork_session(session.id, "what-if", at_seq=60)
    assert (fork.name, fork.parent, fork.fork_seq) == ("what-if", "main", 60)
    assert await _rows(store) == before  # nothing copied
    await _talk(store, session.id, "w", 5, branch="what-if")
    await _talk(store, session.id, "n", 3)
    assert await _rows(store) == before + 5 + 3  # each side grows by its own messages only
    assert await _contents(store, session.id, "what-if") == [f"m{i}" for i in range(60)] + [f"w{i}" for i in range(5)]
    assert await _contents(store, session.id) == [f"m{i}" for i in range(100)] + ["n0", "n1", "n2"]
    # A fork of the fork, at the latest message by default.
    deeper = await store.fork_session(session.id, "deeper", parent="what-if")
    await _talk(store, session.id, "d", 1, branch="deeper")
    assert (await _contents(store, session.id, "deeper"))[-3:] == ["w3", "w4", "d0"]
    assert len(await _contents(store, session.id, "deeper")) == 66
    assert deeper.fork_seq == (await store.get_messages(session.id, branch="what-if"))[-1].seq
    # Windows and limits read the branch's own view.
    assert await _contents(store, session.id, "what-if", limit=2) == ["w3", "w4"]
    listed = {b.name: b for b in await store.list_branches(session.id)}
    assert list(listed) == ["main", "what-if", "deeper"]
    assert (listed["main"].messages, listed["what-if"].messages, listed["deeper"].messages) == (103, 5, 1)


async def test_deleting_either_side_leaves_the_other_whole(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await _talk(store, session.id, "m", 10)
    await store.fork_session(session.id, "b", at_seq=6)
    await _talk(store, session.id, "b", 4, branch="b")
    await _talk(store, session.id, "n", 2)
    fork_view = await _contents(store, session.id, "b")
    main_view = await _contents(store, session.id)
    # Delete the parent: the fork keeps the six messages it shares; main's others go.
    removed = await store.delete_branch(session.id, "main")
    assert removed == 4 + 2
    assert await _contents(store, session.id, "b") == fork_view
    with pytest.raises(BranchNotFound):
        await store.get_messages(session.id)
    with pytest.raises(BranchNotFound):
        await store.add_messages(session.id, [NewMessage("user", "into deleted main")])
    assert [b.name for b in await store.list_branches(session.id)] == ["b"]
    await _talk(store, session.id, "c", 1, branch="b")
    assert (await _contents(store, session.id, "b"))[-1] == "c0"
    # Then the fork: nothing of either is left.
    await store.delete_branch(session.id, "b")
    assert await _rows(store) == 0

    # The other way round: deleting the fork leaves main as it was.
    other = await store.create_session("u", "a")
    await _talk(store, other.id, "m", 10)
    await store.fork_session(other.id, "b", at_seq=6)
    await _talk(store, other.id, "b", 4, branch="b")
    assert await store.delete_branch(other.id, "b") == 4
    assert await _contents(store, other.id) == [f"m{i}" for i in range(10)]
    assert main_view  # (the first session's main view was whole before its deletion)


async def test_deleting_a_middle_branch_keeps_what_its_descendants_share(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await _talk(store, session.id, "m", 3)
    await store.fork_session(session.id, "a")
    await _talk(store, session.id, "a", 4, branch="a")
    a_rows = await store.get_messages(session.id, branch="a")
    await store.fork_session(session.id, "b", parent="a", at_seq=a_rows[4].seq)
    await _talk(store, session.id, "b", 2, branch="b")
    b_view = await _contents(store, session.id, "b")
    assert b_view == ["m0", "m1", "m2", "a0", "a1", "b0", "b1"]
    assert await store.delete_branch(session.id, "a") == 2  # a2, a3: nobody shares them
    assert await _contents(store, session.id, "b") == b_view
    with pytest.raises(BranchNotFound):
        await store.fork_session(session.id, "c", parent="a")
    assert await store.delete_branch(session.id, "b") == 4  # b's own two and a's two it kept
    assert await _contents(store, session.id) == ["m0", "m1", "m2"]
    # The deleted names can be used again.
    await store.fork_session(session.id, "a", at_seq=0)
    assert await _contents(store, session.id, "a") == []


async def test_fork_errors(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await _talk(store, session.id, "m", 3)
    await store.fork_session(session.id, "x")
    with pytest.raises(BranchExists):
        await store.fork_session(session.id, "x")
    with pytest.raises(BranchExists):
        await store.fork_session(session.id, "main")
    with pytest.raises(BranchNotFound):
        await store.fork_session(session.id, "y", parent="nope")
    with pytest.raises(InvalidInput):
        await store.fork_session(session.id, "y", at_seq=99)
    with pytest.raises(SessionNotFound):
        await store.fork_session("no-such-session", "y")
    with pytest.raises(SessionOwnershipError):
        await store.fork_session(session.id, "y", user_id="mallory")
    with pytest.raises(BranchNotFound):
        await store.get_messages(session.id, branch="nope")
    with pytest.raises(BranchNotFound):
        await store.add_messages(session.id, [NewMessage("user", "x")], branch="nope")
    with pytest.raises(BranchNotFound):
        await store.delete_branch(session.id, "nope")
    never_forked = await store.create_session("u", "a")
    with pytest.raises(BranchNotFound):
        await store.add_messages(never_forked.id, [NewMessage("user", "x")], branch="x")
    with pytest.raises(BranchNotFound):
        await store.get_messages(never_forked.id, branch="x")


async def test_pop_and_clear_respect_what_branches_share(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await _talk(store, session.id, "m", 4)
    await store.fork_session(session.id, "b")
    # main's newest message is the fork's too: popping it from main would take it from b.
    with pytest.raises(BranchConflict):
        await store.pop_message(session.id)
    with pytest.raises(BranchConflict):
        await store.pop_message(session.id, branch="b")  # b has nothing of its own
    await _talk(store, session.id, "b", 2, branch="b")
    popped = await store.pop_message(session.id, branch="b")
    assert popped is not None
    assert (popped.content, popped.branch) == ("b1", "b")
    # Clearing main empties its view; b keeps what it shares.
    await _talk(store, session.id, "n", 2)
    assert await store.clear_session(session.id, branch="main") == 2
    assert await _contents(store, session.id) == []
    assert await _contents(store, session.id, "b") == ["m0", "m1", "m2", "m3", "b0"]
    await _talk(store, session.id, "after", 1)
    assert await _contents(store, session.id) == ["after0"]
    # A fork of the cleared main starts empty, not with what main cleared.
    await store.fork_session(session.id, "c", at_seq=0)
    assert await _contents(store, session.id, "c") == []
    # A whole-session clear takes every branch.
    await store.clear_session(session.id)
    assert await _rows(store) == 0
    assert [b.name for b in await store.list_branches(session.id)] == ["main"]


async def test_the_sdk_session_reads_and_writes_its_branch(store: PostgresSessionStore) -> None:
    main = PostgresSession("conv", store=store, user_id="u")
    await main.add_items([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    await store.fork_session("conv", "retry", at_seq=1, user_id="u")
    retry = PostgresSession("conv", store=store, user_id="u", branch="retry")
    await retry.add_items([{"role": "assistant", "content": "hey there"}])
    assert [i["content"] for i in await retry.get_items()] == ["hi", "hey there"]  # type: ignore[typeddict-item]
    assert [i["content"] for i in await main.get_items()] == ["hi", "hello"]  # type: ignore[typeddict-item]
    await retry.clear_session()
    assert await retry.get_items() == []
    assert len(await main.get_items()) == 2
    assert await retry.pop_item() is None


async def test_concurrent_appends_to_branches_keep_one_order(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await _talk(store, session.id, "m", 2)
    for name in ("x", "y"):
        await store.fork_session(session.id, name)

    async def write(branch: str) -> None:
        for i in range(20):
            await store.add_messages(session.id, [NewMessage("user", f"{branch}{i}")], branch=branch)

    await asyncio.gather(*(write(b) for b in ("main", "x", "y")))
    for branch in ("main", "x", "y"):
        view = await store.get_messages(session.id, branch=branch)
        assert [m.content for m in view] == ["m0", "m1"] + [f"{branch}{i}" for i in range(20)]
        assert [m.seq for m in view] == sorted(m.seq for m in view)


async def test_branches_survive_export_and_import(store: PostgresSessionStore, database_url: str) -> None:
    session = await store.create_session("u", "a")
    await _talk(store, session.id, "m", 3)
    await store.fork_session(session.id, "b", at_seq=2)
    await _talk(store, session.id, "b", 2, branch="b")
    lines = [line async for line in export_jsonl(store)]
    assert sum('"type": "branch"' in line for line in lines) == 1
    copy = f"{store.schema}_copy"
    try:
        async with PostgresSessionStore(database_url, schema=copy) as target:
            report = await import_jsonl(target, lines)
            assert report.messages_added == 5
            assert await _contents(target, session.id, "b") == ["m0", "m1", "b0", "b1"]
            assert await _contents(target, session.id) == ["m0", "m1", "m2"]
            again = await import_jsonl(target, lines)
            assert (again.messages_added, again.messages_present) == (0, 5)
            assert [line async for line in export_jsonl(target)] == lines
    finally:
        await store.pool.execute(f'DROP SCHEMA IF EXISTS "{copy}" CASCADE')
