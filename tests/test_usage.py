"""Per-turn usage: recorded by SessionAgent (or any caller), summed per session, user, agent and day."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from agents import Agent
from typer.testing import CliRunner

from convostore import InvalidInput, PostgresSessionStore, SessionNotFound, SessionOwnershipError, TurnUsage
from convostore.cli import app
from convostore.openai_agents import OfflineModel, SessionAgent


async def test_usage_is_summed_per_session_user_agent_and_day(store: PostgresSessionStore) -> None:
    a = await store.create_session("alice", "support")
    b = await store.create_session("alice", "sales")
    c = await store.create_session("bob", "support")
    await store.record_usage(a.id, TurnUsage(input_tokens=100, output_tokens=10, cached_tokens=40, model="m1"))
    await store.record_usage(a.id, TurnUsage(requests=2, input_tokens=50, reasoning_tokens=7, duration=1.5))
    await store.record_usage(b.id, TurnUsage(input_tokens=5))
    await store.record_usage(c.id, TurnUsage(input_tokens=1, output_tokens=1))
    by_session = {t.key: t for t in await store.usage(by="session")}
    assert by_session[a.id].turns == 2
    assert by_session[a.id].requests == 3
    assert (by_session[a.id].input_tokens, by_session[a.id].cached_tokens) == (150, 40)
    assert (by_session[a.id].reasoning_tokens, by_session[a.id].duration) == (7, 1.5)
    assert {t.key: t.input_tokens for t in await store.usage(by="user")} == {"alice": 155, "bob": 1}
    assert {t.key: t.input_tokens for t in await store.usage(by="agent")} == {"sales": 5, "support": 151}
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert [(t.key, t.turns) for t in await store.usage(by="day")] == [(today, 4)]
    assert await store.usage(since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert [t.key for t in await store.usage(by="user", agent_name="sales")] == ["alice"]
    # A user's view sums that user's usage only.
    assert {t.key for t in await store.scoped(user="bob").usage(by="user")} == {"bob"}


async def test_a_retried_record_counts_once_and_bad_usage_is_refused(store: PostgresSessionStore) -> None:
    session = await store.create_session("alice", "a")
    for _ in range(3):
        await store.record_usage(session.id, TurnUsage(input_tokens=9), usage_id="turn-1")
    assert [t.input_tokens for t in await store.usage()] == [9]
    with pytest.raises(InvalidInput):
        await store.record_usage(session.id, TurnUsage(input_tokens=-1))
    with pytest.raises(InvalidInput):
        await store.record_usage(session.id, TurnUsage(duration=float("nan")))
    with pytest.raises(InvalidInput):
        await store.record_usage(session.id, {"input_tokens": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await store.usage(by="month")
    with pytest.raises(SessionNotFound):
        await store.record_usage("no-such-session", TurnUsage())
    with pytest.raises(SessionOwnershipError):
        await store.record_usage(session.id, TurnUsage(), user_id="mallory")
    # Deleting the session takes its usage with it (erasure).
    await store.delete_session(session.id)
    assert await store.usage() == []


async def test_session_agent_records_each_turn(store: PostgresSessionStore) -> None:
    agent = SessionAgent(Agent(name="helper", model=OfflineModel()), store)
    await agent.run("my name is Ada", user_id="ada")
    await agent.run("what is my name?", session_id=agent.current_session_id)
    chunks = [c async for c in agent.stream_text("and again?", session_id=agent.current_session_id)]
    assert chunks
    [total] = await store.usage(by="user")
    assert (total.key, total.turns, total.requests) == ("ada", 3, 3)
    assert total.input_tokens > 0
    assert total.output_tokens > 0
    assert total.duration > 0


def test_the_cli_shows_usage_and_branches_and_raw_history(database_url: str, schema_name: str) -> None:
    import asyncio

    async def seed() -> str:
        async with PostgresSessionStore(database_url, schema=schema_name) as store:
            session = await store.create_session("alice", "support")
            stored = await store.add_messages(session.id, [{"role": "user", "content": f"m{i}"} for i in range(3)])
            await store.compact(session.id, [{"role": "user", "content": "the gist"}], from_seq=stored[0].seq)
            await store.fork_session(session.id, "what-if", at_seq=0)
            await store.record_usage(session.id, TurnUsage(input_tokens=123, output_tokens=45))
            return session.id

    sid = asyncio.run(seed())
    runner, env = CliRunner(), {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}
    usage = runner.invoke(app, ["stats", "--usage", "--by", "agent", "--json"], env=env)
    assert usage.exit_code == 0, usage.output
    [row] = json.loads(usage.output)
    assert (row["key"], row["input_tokens"], row["output_tokens"]) == ("support", 123, 45)
    table = runner.invoke(app, ["stats", "--usage", "--since", "1d"], env=env)
    assert table.exit_code == 0
    assert "123" in table.output
    shown = runner.invoke(app, ["sessions", "show", sid], env=env)
    assert "the gist" in shown.output
    assert "m1" not in shown.output
    raw = runner.invoke(app, ["sessions", "show", sid, "--raw"], env=env)
    assert raw.output.count("(replaced by a summary)") == 3
    assert "summary of #1-#3" in raw.output
    branches = runner.invoke(app, ["sessions", "branches", sid], env=env)
    assert "what-if" in branches.output
    missing = runner.invoke(app, ["sessions", "show", sid, "--branch", "nope"], env=env)
    assert missing.exit_code == 1
    assert "no branch" in missing.output
