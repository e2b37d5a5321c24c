"""The Agents SDK adapter with the real Runner, scripted or offline models, and real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.memory import Session, SessionSettings
from agents.memory.session import _session_accepts_wrapper
from agents.testing import ModelCall, ScriptedModel, assistant_message, function_call

from convostore import PostgresSessionStore, SessionOwnershipError
from convostore.openai_agents import OfflineModel, PostgresSession, SessionAgent


def _user_texts(call: ModelCall) -> list[str]:
    items = [call.input] if isinstance(call.input, str) else call.input
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and item.get("role") == "user" and isinstance(item.get("content"), str):
            out.append(item["content"])
    return out


@function_tool
def lookup(city: str) -> str:
    """Weather for a city (output holds NUL and non-ASCII on purpose)."""
    return f"{city}: 21°C, ensoleillé\x00 ☀"


async def _get(session: PostgresSession, limit: int | None = None) -> list[Any]:
    """get_items, typed loosely: the SDK's item TypedDicts are a union of 30 shapes."""
    return list(await session.get_items(limit))


def _session(store: PostgresSessionStore, sid: str = "conv-1", user: str = "alice", **kw: Any) -> PostgresSession:
    return PostgresSession(sid, store=store, user_id=user, agent_name="Assistant", **kw)


async def test_satisfies_the_sdk_session_protocol(store: PostgresSessionStore) -> None:
    session = _session(store)
    assert isinstance(session, Session)
    assert _session_accepts_wrapper(session)
    assert session.session_settings is not None


async def test_history_reaches_the_model_on_the_next_turn(store: PostgresSessionStore) -> None:
    model = ScriptedModel([[assistant_message("Hi Alice")], [assistant_message("You are Alice")]])
    agent = Agent(name="Assistant", model=model)
    session = _session(store)
    await Runner.run(agent, "My name is Alice", session=session)
    result = await Runner.run(agent, "What's my name?", session=session)
    assert result.final_output == "You are Alice"
    second = model.calls[1]
    assert _user_texts(second) == ["My name is Alice", "What's my name?"]
    assert any(
        isinstance(i, dict) and i.get("type") == "message" and i.get("role") == "assistant" for i in second.input
    )
    row = await store.get_session("conv-1")
    assert row is not None
    assert (row.user_id, row.agent_name) == ("alice", "Assistant")
    assert [m.role for m in row.messages] == ["user", "assistant", "user", "assistant"]
    assert row.messages[1].content == "Hi Alice"


async def test_function_tool_call_and_output_are_persisted(store: PostgresSessionStore) -> None:
    model = ScriptedModel(
        [[function_call("lookup", {"city": "Paris"}, call_id="call_1")], [assistant_message("21°C in Paris")]]
    )
    agent = Agent(name="Assistant", model=model, tools=[lookup])
    session = _session(store)
    await Runner.run(agent, "Weather in Paris?", session=session)
    items = await _get(session)
    kinds = [i.get("type", "message") for i in items]
    assert kinds == ["message", "function_call", "function_call_output", "message"]
    assert items[2]["output"] == "Paris: 21°C, ensoleillé\x00 ☀"
    stored = await store.get_messages("conv-1")
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1].tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"city":"Paris"}'}}
    ]
    assert stored[2].tool_call_id == "call_1"
    assert stored[2].content == "Paris: 21°C, ensoleillé\x00 ☀"


def _comparable(items: list[Any]) -> list[tuple[Any, ...]]:
    out = []
    for i in items:
        content = i.get("content")
        text = content if isinstance(content, str) else [p.get("text") for p in content or []]
        out.append((i.get("type", "message"), i.get("role"), str(text), i.get("output"), i.get("name")))
    return out


async def test_streamed_run_persists_the_same_items_as_a_plain_run(store: PostgresSessionStore) -> None:
    def script() -> ScriptedModel:
        return ScriptedModel(
            [[function_call("lookup", {"city": "Oslo"}, call_id="c9")], [assistant_message("Cold in Oslo")]]
        )

    plain = _session(store, "plain")
    await Runner.run(Agent(name="Assistant", model=script(), tools=[lookup]), "Weather?", session=plain)
    streamed = _session(store, "streamed")
    result = Runner.run_streamed(Agent(name="Assistant", model=script(), tools=[lookup]), "Weather?", session=streamed)
    async for _ in result.stream_events():
        pass
    assert result.final_output == "Cold in Oslo"
    assert _comparable(await _get(streamed)) == _comparable(await _get(plain))


async def test_two_runners_on_one_session_keep_each_write_contiguous(store: PostgresSessionStore) -> None:
    def agent(tag: str) -> Agent[Any]:
        steps: list[Any] = []
        for i in range(3):
            steps.append([function_call("lookup", {"city": f"{tag}{i}"}, call_id=f"{tag}-call-{i}")])
        steps.append([assistant_message(f"done {tag}")])
        return Agent(name="Assistant", model=ScriptedModel(steps), tools=[lookup])

    session_a, session_b = _session(store, "shared"), _session(store, "shared")
    await asyncio.gather(
        Runner.run(agent("a"), "run a", session=session_a),
        Runner.run(agent("b"), "run b", session=session_b),
    )
    items = await _get(session_a)
    assert len(items) == 2 * (1 + 3 * 2 + 1)
    for index, item in enumerate(items):
        if item.get("type") == "function_call":
            follower = items[index + 1]
            assert follower.get("type") == "function_call_output"
            assert follower["call_id"] == item["call_id"]
    for tag in "ab":
        positions = [
            i for i, it in enumerate(items) if tag in str(it.get("call_id", "")) or it.get("content") == f"run {tag}"
        ]
        texts = [it for it in items if it.get("type") == "message" and f"done {tag}" in str(it.get("content"))]
        assert len(texts) == 1
        assert positions == sorted(positions)
    stored = await store.get_messages("shared")
    assert [m.seq for m in stored] == sorted({m.seq for m in stored})


async def test_limits_from_argument_settings_and_run_config(store: PostgresSessionStore) -> None:
    session = _session(store, session_settings=SessionSettings(limit=3))
    await session.add_items([{"role": "user", "content": str(i)} for i in range(10)])
    assert [i["content"] for i in await _get(session)] == ["7", "8", "9"]
    assert [i["content"] for i in await _get(session, 5)] == ["5", "6", "7", "8", "9"]

    model = ScriptedModel([[assistant_message("ok")]])
    unlimited = _session(store)
    await Runner.run(
        Agent(name="Assistant", model=model),
        "new",
        session=unlimited,
        run_config=RunConfig(session_settings=SessionSettings(limit=2)),
    )
    assert _user_texts(model.calls[0]) == ["8", "9", "new"]


async def test_limit_returns_exactly_the_latest_raw_items_like_the_sdk_sessions(store: PostgresSessionStore) -> None:
    """As the SDK's reference sessions do: the latest N raw items, pairing left to the Runner
    (turn-aware windows are an explicit option); None or a negative limit means all."""
    session = _session(store)
    await session.add_items(
        [
            {"role": "user", "content": "q"},
            {"type": "function_call", "call_id": "x1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "x1", "output": "r"},
            {"role": "assistant", "content": "a"},
        ]
    )
    window = await _get(session, 3)
    assert [i.get("type") for i in window] == ["function_call", "function_call_output", None]
    window = await _get(session, 2)
    assert [i.get("type") for i in window] == ["function_call_output", None]
    assert len(await _get(session, -1)) == 4
    assert len(await _get(session, None)) == 4
    assert await _get(session, 0) == []


ITEMS: list[Any] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "input_text", "text": "héllo 日本 🎉"}]},
    {
        "role": "user",
        "content": [{"type": "input_image", "image_url": "https://example.invalid/cat.png", "detail": "auto"}],
    },
    {"role": "user", "content": [{"type": "input_file", "file_id": "file-abc"}]},
    {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "thinking"}],
        "encrypted_content": "gAAAA" + "x" * 2000,
    },
    {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "answer\x00with NUL", "annotations": [], "logprobs": []}],
    },
    {"type": "function_call", "id": "fc_1", "call_id": "call_7", "name": "f", "arguments": '{"a": "\\u0000"}'},
    {"type": "function_call_output", "call_id": "call_7", "output": "out\x00put \ue000 marker"},
    {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
    {"type": "compaction", "id": "cmp_1", "encrypted_content": "opaque"},
    {"type": "item_reference", "id": "msg_0"},
]


async def test_every_item_kind_round_trips_losslessly(store: PostgresSessionStore) -> None:
    session = _session(store)
    await session.add_items(ITEMS)
    assert await _get(session) == ITEMS
    roles = [m.role for m in await store.get_messages("conv-1")]
    assert roles == ["system", "user", "user", "user", "assistant", "assistant", "assistant", "tool", "assistant",
                     "assistant", "assistant"]  # fmt: skip
    assert await session.pop_item() == ITEMS[-1]
    assert await _get(session, 1) == [ITEMS[-2]]


async def test_pop_item_is_atomic_under_concurrency(store: PostgresSessionStore) -> None:
    session = _session(store)
    await session.add_items([{"role": "user", "content": str(i)} for i in range(20)])
    popped: list[Any] = await asyncio.gather(*(_session(store).pop_item() for _ in range(25)))
    got = [p["content"] for p in popped if p is not None]
    assert sorted(got, key=int) == [str(i) for i in range(20)]
    assert await _get(session) == []


async def test_sessions_are_isolated_and_owned(store: PostgresSessionStore) -> None:
    a, b = _session(store, "s-a"), _session(store, "s-b")
    await a.add_items([{"role": "user", "content": "for a"}])
    await b.add_items([{"role": "user", "content": "for b"}])
    assert await _get(a) == [{"role": "user", "content": "for a"}]
    await a.clear_session()
    assert await _get(a) == []
    assert await _get(b) == [{"role": "user", "content": "for b"}]

    intruder = _session(store, "s-b", user="mallory")
    with pytest.raises(SessionOwnershipError):
        await _get(intruder)
    with pytest.raises(SessionOwnershipError):
        await intruder.add_items([{"role": "user", "content": "hijack"}])
    with pytest.raises(SessionOwnershipError):
        await intruder.pop_item()
    with pytest.raises(SessionOwnershipError):
        await intruder.clear_session()
    assert await _get(b) == [{"role": "user", "content": "for b"}]


async def test_a_new_store_sees_the_same_history(database_url: str, schema_name: str) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name) as first:
        await _session(first).add_items([{"role": "user", "content": "remember me"}])
    async with PostgresSessionStore(database_url, schema=schema_name) as second:
        assert await _get(_session(second)) == [{"role": "user", "content": "remember me"}]


async def test_session_agent_remembers_and_exposes_the_session_id(store: PostgresSessionStore) -> None:
    model = OfflineModel()
    runner = SessionAgent(Agent(name="MemoryAgent", model=model), store)
    first = await runner.run("My name is Alice", user_id="user_123")
    assert "Alice" in first
    assert runner.current_session_id is not None
    second = await runner.run("What's my name?", session_id=runner.current_session_id, user_id="user_123")
    assert second.endswith("Your name is Alice.")
    chunks = [
        c async for c in runner.stream_text("What's my name?", session_id=runner.current_session_id, user_id="user_123")
    ]
    assert "".join(chunks).endswith("Your name is Alice.")
    # A different session knows nothing.
    fresh = await runner.run("What's my name?", user_id="user_123")
    assert "don't know" in fresh
    assert len(await store.get_user_sessions("user_123")) == 2


def test_demo_remembers_across_processes(database_url: str, schema_name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(DATABASE_URL=database_url, CONVOSTORE_SCHEMA=schema_name)
    done = subprocess.run(
        [sys.executable, "-m", "convostore.demo"], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert "[offline model] Your name is Alice." in done.stdout
    assert "What's my name?" in done.stdout


async def test_offline_model_answers_only_from_history() -> None:
    from convostore.openai_agents._offline import answer

    assert answer([{"role": "user", "content": "What's my name?"}]).endswith(
        "nothing in the 0 earlier messages I was given says."
    )
    assert (
        answer(
            [
                {"role": "user", "content": "my favourite colour is blue"},
                {"role": "user", "content": "what is my favourite colour?"},
            ]
        )
        == "[offline model] Your favourite colour is blue."
    )
