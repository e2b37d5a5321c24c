"""History windows: every window of every generated conversation is one the model accepts.

Conversations are generated with parallel tool calls, reasoning items, handoffs, computer
calls, approvals answered in the next turn, and system or developer messages. For every
window, at every size (each number of turns, and token budgets from nothing to all), the
window must pass the Agents SDK's own input validation (``drop_orphan_function_calls`` with
every output prunable drops nothing) and part no call from its output, no approval from its
request and no reasoning item from the item after it.

The selection the database makes is checked against a reference here (the same rules in
Python) on conversations stored for real; the reference, then cut by :func:`fit`, is checked
on 10,000 conversations (``CONVOSTORE_WINDOW_CONVERSATIONS`` changes the number).
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import pytest
from agents.items import TResponseInputItem
from agents.run_internal.items import drop_orphan_function_calls

from convostore import Message, PostgresSessionStore, Window
from convostore import _validate as check
from convostore.openai_agents import PostgresSession
from convostore.openai_agents._items import to_items, to_message
from convostore.windows import PINNED_ROLES, fit, safe_start

CONVERSATIONS = int(os.environ.get("CONVOSTORE_WINDOW_CONVERSATIONS", "10000"))
STORED = 150  # conversations also stored and read through the database


def _reasoning(n: int, text: str | None = None) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"type": "reasoning", "id": f"rs_{n}", "summary": summary}


def _call(call_id: str, name: str = "lookup", kind: str = "function_call") -> dict[str, Any]:
    if kind == "computer_call":
        action = {"type": "screenshot"}
        return {"type": kind, "call_id": call_id, "id": f"cu_{call_id}", "action": action,
                "pending_safety_checks": [], "status": "completed"}  # fmt: skip
    return {"type": kind, "call_id": call_id, "name": name, "arguments": json.dumps({"q": call_id})}


def _output(call_id: str, output: Any, kind: str = "function_call_output") -> dict[str, Any]:
    return {"type": kind, "call_id": call_id, "output": output}


def _said(n: int, text: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "role": "assistant", "id": f"msg_{n}", "status": "completed", "content": content}


def conversation(rng: random.Random) -> list[dict[str, Any]]:
    """A generated conversation as Agents SDK input items."""
    items: list[dict[str, Any]] = []
    n = iter(range(10**9))
    if rng.random() < 0.5:
        items.append({"role": rng.choice(["system", "developer"]), "content": "You are helpful."})
    pending_approval: str | None = None
    for _turn in range(rng.randint(1, 8)):
        items.append({"role": "user", "content": f"question {next(n)} " + "x" * rng.randint(0, 200)})
        if pending_approval is not None:  # an approval asked for last turn, answered now
            items.append({"type": "mcp_approval_response", "approval_request_id": pending_approval, "approve": True})
            pending_approval = None
        if rng.random() < 0.1:
            items.append({"role": "developer", "content": "Mind the tone."})
        for _step in range(rng.randint(0, 3)):
            if rng.random() < 0.6:
                items.append(_reasoning(next(n), "thinking"))
            kind = rng.random()
            if kind < 0.55:  # parallel function calls, outputs in any order
                calls = [f"call_{next(n)}" for _ in range(rng.randint(1, 4))]
                for c in list(calls):
                    items.append(_call(c))
                    if rng.random() < 0.2:
                        items += [_reasoning(next(n)), _call(f"{c}b")]
                        calls.append(f"{c}b")
                rng.shuffle(calls)
                items += [_output(c, "y" * rng.randint(1, 300)) for c in calls]
            elif kind < 0.7:  # a handoff
                c = f"call_{next(n)}"
                items += [_call(c, "transfer_to_billing"), _output(c, '{"assistant": "billing"}')]
            elif kind < 0.85:  # a computer call
                c = f"call_{next(n)}"
                screenshot = {"type": "computer_screenshot", "image_url": "data:"}
                items += [_call(c, kind="computer_call"), _output(c, screenshot, "computer_call_output")]
            else:
                items.append(_said(next(n), "a note"))
        if rng.random() < 0.6:
            items.append(_reasoning(next(n)))
        items.append(_said(next(n), "answer " * rng.randint(1, 40)))
        if rng.random() < 0.15:
            pending_approval = f"mcpr_{next(n)}"
            items.append({"type": "mcp_approval_request", "id": pending_approval, "name": "deploy",
                          "arguments": "{}", "server_label": "ops"})  # fmt: skip
    return items


def as_messages(items: list[dict[str, Any]]) -> tuple[list[Message], dict[int, int]]:
    """The messages a session stores for *items*, and each one's token count (by seq)."""
    now = datetime.now(UTC)
    messages, tokens = [], {}
    for seq, item in enumerate(items, start=1):
        new = to_message(item)
        row = check.message_row(new)
        messages.append(Message(row.id, "s", seq, new.role, new.content, new.tool_calls, new.tool_call_id, item, now))
        tokens[seq] = row.tokens
    return messages, tokens


def reference(messages: list[Message], tokens: dict[int, int], window: Window) -> list[Message]:
    """The window the database selects (the rules of convostore_read), before :func:`fit`."""
    pinned = window.pinned
    left = None
    if window.tokens is not None:
        left = window.tokens - (sum(tokens[m.seq] for m in messages if m.role in PINNED_ROLES) if pinned else 0)
    kept: list[Message] = []
    used = users_newer = 0
    for m in reversed(messages):
        if left is not None:
            used += 0 if pinned and m.role in PINNED_ROLES else tokens[m.seq]
            if used > left:
                break
        if window.turns is not None and users_newer >= window.turns:
            break
        kept.append(m)
        users_newer += m.role == "user"
    # The window never starts right after a reasoning item (it stays with the item after it).
    after = {m.seq: (prev.raw or {}).get("type") for prev, m in itertools.pairwise(messages)}
    starts = [m.seq for m in kept if after.get(m.seq) != "reasoning"]
    cut = min(starts) if starts else max((m.seq for m in messages), default=0) + 1
    before = [m for m in messages if m.seq < cut and m.role in PINNED_ROLES] if pinned else []
    return before + [m for m in messages if m.seq >= cut]


def windows(messages: list[Message], tokens: dict[int, int]) -> Iterator[Window]:
    turns = sum(m.role == "user" for m in messages)
    total = sum(tokens.values())
    for pinned in (True, False):
        for n in range(turns + 2):
            yield Window(turns=n, pinned=pinned)
        for budget in sorted({0, 1, 10, 50, 100, total // 7, total // 3, total // 2, total - 1, total, total + 1}):
            yield Window(tokens=max(budget, 0), pinned=pinned)
        yield Window(turns=max(turns // 2, 1), tokens=total // 2, pinned=pinned)


def assert_accepted(window: list[dict[str, Any]], history: list[dict[str, Any]], where: str) -> None:
    """What the model is given is valid input: nothing parted from what it belongs to."""
    given = cast(list[TResponseInputItem], window)
    assert drop_orphan_function_calls(given, output_pruning_indexes=set(range(len(window)))) == window, where
    calls = {i.get("call_id") for i in window if i.get("type") in ("function_call", "computer_call")}
    outputs = {i.get("call_id") for i in window if i.get("type") in ("function_call_output", "computer_call_output")}
    answered = {i.get("call_id") for i in history if i.get("type") in ("function_call_output", "computer_call_output")}
    assert outputs <= calls, f"{where}: an output without its call"
    assert calls & answered <= outputs, f"{where}: a call without its output"
    requests = {i.get("id") for i in window if i.get("type") == "mcp_approval_request"}
    responses = {i.get("approval_request_id") for i in window if i.get("type") == "mcp_approval_response"}
    assert responses <= requests, f"{where}: an approval without its request"
    for index, item in enumerate(window):
        if item.get("type") == "reasoning" and item is not history[-1]:
            assert index + 1 < len(window), f"{where}: a reasoning item without the item after it"


def items_of(messages: list[Message]) -> list[dict[str, Any]]:
    return [item for m in messages for item in to_items(m)]


@pytest.mark.server_independent
def test_every_window_of_10000_conversations_is_accepted() -> None:
    rng = random.Random(20261124)
    checked = 0
    for number in range(CONVERSATIONS):
        items = conversation(rng)
        messages, tokens = as_messages(items)
        seen: set[tuple[int, ...]] = set()
        for window in windows(messages, tokens):
            chosen = fit(reference(messages, tokens, window), pinned=window.pinned)
            if window.tokens is not None:
                spent = sum(tokens[m.seq] for m in chosen)
                only_pinned = window.pinned and all(m.role in PINNED_ROLES for m in chosen)
                assert spent <= window.tokens or only_pinned, f"conversation {number}, {window}: over budget"
            key = tuple(m.seq for m in chosen)
            if key not in seen:  # windows of several sizes are often the same window
                seen.add(key)
                assert_accepted(items_of(chosen), items, f"conversation {number}, {window}")
                checked += 1
    assert checked > CONVERSATIONS * 5


def test_safe_start_moves_past_what_a_cut_would_part() -> None:
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "q"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "b", "output": "1"},
        {"type": "function_call_output", "call_id": "a", "output": "2"},
        {"role": "assistant", "content": "done"},
    ]
    messages, _ = as_messages(items)
    assert safe_start(messages) == 0
    # Cut inside the calls: the start moves past both outputs. (The database never starts a
    # window right after a reasoning item: it keeps each item's kind for that.)
    assert [m.seq for m in fit(messages[3:])] == [7]
    assert safe_start(messages[1:]) == 0  # the reasoning item stays with its call
    assert safe_start([messages[0], messages[1], messages[6]]) == 0
    assert safe_start([messages[1], messages[6]]) == 0


async def test_the_database_selects_the_reference_window(store: PostgresSessionStore) -> None:
    rng = random.Random(7)
    for number in range(STORED):
        items = conversation(rng)
        sid = f"conversation-{number}"
        session = PostgresSession(sid, store=store, user_id="u")
        await session.add_items(items)  # type: ignore[arg-type]
        stored = await store.get_messages(sid)
        messages, tokens = as_messages(items)
        assert [m.raw for m in stored] == items
        for window in windows(messages, tokens):
            got = await store.get_messages(sid, window=window)
            want = fit(reference(messages, tokens, window), pinned=window.pinned)
            assert [m.seq for m in got] == [m.seq for m in want], f"conversation {number}, {window}"
        # The SDK session gives the model the same window, as items.
        windowed = PostgresSession(sid, store=store, user_id="u", window=Window(turns=2))
        got_items = await windowed.get_items()
        want_items = items_of(fit(reference(messages, tokens, Window(turns=2))))
        assert got_items == want_items
        assert_accepted(got_items, items, f"conversation {number}")  # type: ignore[arg-type]
        # An explicit limit keeps the SDK's meaning: exactly the latest items.
        assert await windowed.get_items(limit=3) == items[-3:]


async def test_windows_longer_than_a_chunk_and_below_a_seq(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await store.add_messages(session.id, [{"role": "system", "content": "rules"}])
    for turn in range(40):
        await store.add_messages(
            session.id,
            [{"role": "user", "content": f"q{turn}"}]
            + [{"role": "assistant", "content": f"a{turn}.{i}"} for i in range(9)],
        )
    turns = await store.get_messages(session.id, window=Window(turns=30))
    assert turns[0].content == "rules"
    assert [m.content for m in turns[1:]][:2] == ["q10", "a10.0"]
    assert len(turns) == 1 + 300
    unpinned = await store.get_messages(session.id, window=Window(turns=30, pinned=False))
    assert unpinned == turns[1:]
    everything = await store.get_messages(session.id, window=Window(turns=1000))
    assert len(everything) == 401
    budget = await store.get_messages(session.id, window=Window(tokens=10**9))
    assert budget == everything
    capped = await store.get_messages(session.id, window=Window(turns=30), limit=5)
    assert [m.content for m in capped] == ["rules", "a39.4", "a39.5", "a39.6", "a39.7", "a39.8"]
    below = await store.get_messages(session.id, window=Window(turns=1, pinned=False), before_seq=turns[-1].seq - 9)
    assert [m.content for m in below] == ["q38"] + [f"a38.{i}" for i in range(9)]
    assert await store.get_messages(session.id, window=Window(turns=0, pinned=False)) == []
    assert [m.content for m in await store.get_messages(session.id, window=Window(tokens=0))] == ["rules"]


@pytest.mark.parametrize("rules", [True, False], ids=["pinned", "none-pinned"])
async def test_windows_after_reasoning_in_branches_and_compacted(
    store: PostgresSessionStore, database_url: str, schema_name: str, rules: bool
) -> None:
    """A window starts at a user message, unless a reasoning item is right before it (an
    interrupted run), on a branch's view and on a compacted view alike, in a session with
    a pinned message and in one without."""
    items: list[dict[str, Any]] = [{"role": "system", "content": "rules"}] if rules else []
    for turn in range(6):
        items.append({"role": "user", "content": f"q{turn}"})
        items.append(_reasoning(turn))  # a run cut off after reasoning: the next turn follows it
        if turn % 2:
            items.append(_said(turn, f"a{turn}"))
    session = PostgresSession("interrupted", store=store, user_id="u")
    await session.add_items(items)  # type: ignore[arg-type]
    messages, _ = as_messages(items)

    async def check_view(view: list[Message], **read: Any) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            stored = await conn.fetch(
                f'SELECT seq, tokens FROM "{schema_name}".conversation_messages WHERE session_id = $1', "interrupted"
            )
        finally:
            await conn.close()
        tokens = {r["seq"]: r["tokens"] for r in stored}
        total = sum(tokens[m.seq] for m in view)
        for pinned in (True, False):
            shapes = [Window(turns=n, pinned=pinned) for n in range(sum(m.role == "user" for m in view) + 2)]
            shapes += [Window(tokens=budget, pinned=pinned) for budget in range(0, total + 2, 7)]
            shapes += [Window(turns=2, tokens=total // 2, pinned=pinned)]
            for window in shapes:
                got = await store.get_messages("interrupted", window=window, **read)
                want = fit(reference(view, tokens, window), pinned=pinned)
                assert [m.seq for m in got] == [m.seq for m in want], f"{read} {window}"

    await check_view(messages)
    await store.fork_session("interrupted", "b", at_seq=6)
    await store.add_messages("interrupted", [{"role": "user", "content": "b0"}], branch="b")
    branch = messages[:6] + [m for m in await store.get_messages("interrupted", branch="b") if m.seq > 6]
    await check_view(branch, branch="b")
    summary = await store.compact("interrupted", [{"role": "assistant", "content": "summary"}], from_seq=2)
    assert summary is not None
    compacted = await store.get_messages("interrupted")
    await check_view(compacted)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"turns": -1}, "turns"), ({"tokens": "9"}, "tokens"), ({"turns": True}, "turns"), ({"pinned": 1}, "pinned")],
)
def test_a_bad_window_is_refused(kwargs: dict[str, Any], error: str) -> None:
    from convostore import InvalidInput

    with pytest.raises(InvalidInput, match=error):
        Window(**kwargs)


async def test_a_token_counter_counts_when_written(database_url: str, schema_name: str) -> None:
    import tiktoken

    from convostore import tiktoken_counter

    # A real tiktoken encoding built here (bytes as tokens, one merge), since the published
    # ones are downloaded on first use.
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
    encoding = tiktoken.Encoding("bytes", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})
    counter = tiktoken_counter(encoding)
    assert counter("abab") == 2
    async with PostgresSessionStore(database_url, schema=schema_name, token_counter=counter) as store:
        session = await store.create_session("u", "a")
        await store.add_messages(
            session.id, [{"role": "user", "content": "ab" * 10}, {"role": "user", "content": "abc"}]
        )
        stored = await store.pool.fetch(f'SELECT tokens FROM "{schema_name}".conversation_messages ORDER BY seq')
        assert [r["tokens"] for r in stored] == [10, 2]
        assert [m.content for m in await store.get_messages(session.id, window=Window(tokens=2))] == ["abc"]
        assert len(await store.get_messages(session.id, window=Window(tokens=12))) == 2
