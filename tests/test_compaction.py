"""Compaction that keeps the record: the model sees summary plus tail, the raw record stays whole."""

from __future__ import annotations

import asyncio
import json
import random
from types import SimpleNamespace
from typing import Any, cast

import pytest
from agents import Agent, RunConfig, Runner
from agents.items import TResponseInputItem
from agents.memory import OpenAIResponsesCompactionSession
from agents.testing import ScriptedModel, assistant_message

from convostore import NewMessage, PostgresSessionStore, SessionNotFound, SessionOwnershipError, export_jsonl
from convostore.openai_agents import PostgresSession


async def _contents(store: PostgresSessionStore, sid: str, **kw: Any) -> list[str]:
    return [m.content for m in await store.get_messages(sid, **kw)]


async def _export(store: PostgresSessionStore) -> list[dict[str, Any]]:
    """The exported messages."""
    lines = [json.loads(line) async for line in export_jsonl(store)]
    return [line for line in lines if line["type"] == "message"]


async def test_a_summary_replaces_the_view_and_keeps_the_record(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    stored = await store.add_messages(session.id, [NewMessage("user", f"m{i}") for i in range(6)])
    before = await _export(store)
    summary = await store.compact(
        session.id, [NewMessage("user", "summary of m2-m5")], from_seq=stored[2].seq, expect=[m.seq for m in stored[2:]]
    )
    assert summary is not None
    assert [(m.content, m.covers) for m in summary] == [("summary of m2-m5", (stored[2].seq, stored[5].seq))]
    assert await _contents(store, session.id) == ["m0", "m1", "summary of m2-m5"]
    assert await _contents(store, session.id, raw=True) == [f"m{i}" for i in range(6)] + ["summary of m2-m5"]
    after = await _export(store)
    assert after[: len(before)] == before  # the record as it was, plus the summary
    assert [line["covers"] for line in after[len(before) :]] == [[stored[2].seq, stored[5].seq]]
    # Appends land after the summary; a later compaction over the first one's summary takes
    # in what that one replaced too.
    await store.add_messages(session.id, [NewMessage("user", "m6")])
    view = await store.get_messages(session.id)
    again = await store.compact(
        session.id, [NewMessage("user", "all of it")], from_seq=view[0].seq, expect=[m.seq for m in view]
    )
    assert again is not None
    assert again[0].covers == (stored[0].seq, view[-1].seq)
    assert await _contents(store, session.id) == ["all of it"]
    assert len(await store.get_messages(session.id, raw=True)) == 9
    # Windows read the compacted view.
    assert await _contents(store, session.id, limit=5) == ["all of it"]


async def test_a_stale_summary_writes_nothing(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    stored = await store.add_messages(session.id, [NewMessage("user", f"m{i}") for i in range(3)])
    expect = [m.seq for m in stored]
    await store.add_messages(session.id, [NewMessage("user", "late")])
    assert await store.compact(session.id, [NewMessage("user", "s")], from_seq=stored[0].seq, expect=expect) is None
    assert await _contents(store, session.id) == ["m0", "m1", "m2", "late"]
    with pytest.raises(SessionNotFound):
        await store.compact("no-such-session-here", [NewMessage("user", "s")])
    with pytest.raises(SessionOwnershipError):
        await store.compact(session.id, [NewMessage("user", "s")], user_id="mallory")


async def test_a_retried_compaction_is_stored_once(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    stored = await store.add_messages(session.id, [NewMessage("user", f"m{i}") for i in range(3)])
    summary = [NewMessage("user", "s", id="summary-1")]
    first = await store.compact(session.id, summary, from_seq=stored[0].seq, expect=[m.seq for m in stored])
    again = await store.compact(session.id, summary, from_seq=stored[0].seq, expect=[m.seq for m in stored])
    assert first == again
    assert await _contents(store, session.id) == ["s"]


async def test_an_empty_summary_hides_what_it_replaces(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    stored = await store.add_messages(session.id, [NewMessage("user", f"m{i}") for i in range(4)])
    assert await store.compact(session.id, [], from_seq=stored[2].seq, expect=[stored[2].seq, stored[3].seq]) == []
    assert await _contents(store, session.id) == ["m0", "m1"]
    raw = await store.get_messages(session.id, raw=True)
    assert raw[-1].role == "item"
    assert raw[-1].covers == (stored[2].seq, stored[3].seq)
    # A pop takes the newest message of the view, not the hidden marker.
    popped = await store.pop_message(session.id)
    assert popped is not None
    assert popped.content == "m1"


async def test_a_compaction_on_a_branch_leaves_main_alone(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await store.add_messages(session.id, [NewMessage("user", f"m{i}") for i in range(4)])
    await store.fork_session(session.id, "b")
    await store.add_messages(session.id, [NewMessage("user", "b0")], branch="b")
    view = await store.get_messages(session.id, branch="b")
    await store.compact(
        session.id, [NewMessage("user", "b summary")], branch="b", from_seq=view[0].seq, expect=[m.seq for m in view]
    )
    assert await _contents(store, session.id, branch="b") == ["b summary"]
    assert await _contents(store, session.id) == ["m0", "m1", "m2", "m3"]


class _CompactingClient:
    """Stands in for the OpenAI client's ``responses.compact``: one summary item per call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.responses = self

    async def compact(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        n = len(self.calls)
        return SimpleNamespace(output=[{"type": "compaction", "id": f"cmp_{n}", "encrypted_content": f"summary {n}"}])


async def test_the_sdks_compaction_session_compacts_a_postgres_session(store: PostgresSessionStore) -> None:
    history: list[TResponseInputItem] = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(12)
    ]
    backend = PostgresSession("compacted", store=store, user_id="u")
    await backend.add_items(history)
    client = _CompactingClient()
    session = OpenAIResponsesCompactionSession(
        "compacted",
        backend,
        client=cast(Any, client),
        compaction_mode="input",
        should_trigger_compaction=lambda _: True,
    )
    agent = Agent(name="worker", model=ScriptedModel(steps=[[assistant_message("done")]]))
    await Runner.run(agent, "continue", session=session, run_config=RunConfig(session_settings={"limit": 4}))
    assert len(client.calls) == 1
    compacted = await backend.get_items()
    assert {"type": "compaction", "id": "cmp_1", "encrypted_content": "summary 1"} in compacted
    raw = await store.get_messages("compacted", raw=True)
    assert [m.raw for m in raw][: len(history)] == history  # every item it replaced stays stored
    assert len(compacted) < len(raw)

    # A manual compaction replaces the whole view (atomically), still keeping the record.
    await session.run_compaction({"force": True, "compaction_mode": "input"})
    assert await backend.get_items() == [{"type": "compaction", "id": "cmp_2", "encrypted_content": "summary 2"}]
    assert len(await store.get_messages("compacted", raw=True)) == len(raw) + 1


async def test_compaction_under_16_appenders_loses_nothing(store: PostgresSessionStore) -> None:
    """16 writers append while a compactor keeps replacing the older part of the view: every
    appended item is stored once, in its writer's order, and is either in the view or within
    the range of a summary in the view; the raw record is exactly what was appended."""
    sid = "busy"
    writers, per_writer = 16, 25
    await store.add_messages(sid, [NewMessage("user", "start")], user_id="u")
    done = asyncio.Event()
    compactions = 0

    async def write(w: int) -> None:
        session = PostgresSession(sid, store=store, user_id="u")
        for i in range(per_writer):
            await session.add_items([{"role": "user", "content": f"w{w}-{i}"}])
            await asyncio.sleep(random.random() / 200)

    async def compact() -> None:
        nonlocal compactions
        session = PostgresSession(sid, store=store, user_id="u")
        attempt = 0
        while not done.is_set():
            attempt += 1
            summary: list[TResponseInputItem] = [{"role": "user", "content": f"summary {attempt}"}]
            if attempt % 2:  # the SDK's suffix path: refused when writers got in after the read
                snapshot = await session._get_compaction_snapshot(30)
                assert snapshot is not None
                compactions += await snapshot.replace_suffix(0, summary)
            else:  # the whole view as it is when the session's lock is had
                compactions += await session._atomic_replace_items(summary)
            await asyncio.sleep(0.005)

    compactor = asyncio.create_task(compact())
    await asyncio.gather(*(write(w) for w in range(writers)))
    done.set()
    await compactor
    assert compactions > 0

    raw = await store.get_messages(sid, raw=True)
    appended = [m for m in raw if m.covers is None]
    assert len(appended) == 1 + writers * per_writer
    assert len({m.content for m in appended}) == len(appended)  # stored once each
    for w in range(writers):
        mine = [m.content for m in appended if m.content.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{i}" for i in range(per_writer)]  # in its writer's order
    view = await store.get_messages(sid)
    visible = {m.seq for m in view}
    ranges = [m.covers for m in view if m.covers is not None]
    for m in appended:
        covered = any(first <= m.seq <= last for first, last in ranges)
        assert (m.seq in visible) != covered, f"{m.content} is {'both' if covered else 'neither'} shown and summarised"
