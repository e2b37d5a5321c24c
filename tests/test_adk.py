"""Google ADK: PostgresSessionService keeps sessions, events and app/user/session state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from google.adk.agents import LlmAgent
from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions.base_session_service import GetSessionConfig
from google.genai import types

from convostore import PostgresSessionStore
from convostore.adk import PostgresSessionService


def _event(author: str, text: str, ts: float, delta: dict[str, Any] | None = None, **kw: Any) -> Event:
    return Event(
        invocation_id="inv",
        author=author,
        content=types.Content(role="user" if author == "user" else "model", parts=[types.Part(text=text)]),
        actions=EventActions(state_delta=delta or {}),
        timestamp=ts,
        **kw,
    )


async def test_sessions_events_and_state_scopes(store: PostgresSessionStore) -> None:
    service = PostgresSessionService(store)
    session = await service.create_session(
        app_name="app", user_id="ada", state={"topic": "tea", "app:theme": "dark", "user:lang": "en", "temp:x": 1}
    )
    assert session.state == {"topic": "tea", "app:theme": "dark", "user:lang": "en"}
    with pytest.raises(AlreadyExistsError):
        await service.create_session(app_name="app", user_id="ada", session_id=session.id)
    # The same id for another user (or app) is another session, as in ADK.
    other = await service.create_session(app_name="app", user_id="bob", session_id=session.id)
    assert other.state == {"app:theme": "dark"}

    await service.append_event(session, _event("user", "hello", 100.0, {"topic": "coffee", "user:lang": "fr"}))
    await service.append_event(session, _event("helper", "hi Ada", 101.0, {"temp:scratch": 1, "app:theme": "light"}))
    partial = _event("helper", "...", 101.5)
    partial.partial = True
    await service.append_event(session, partial)  # partial events are not stored
    got = await service.get_session(app_name="app", user_id="ada", session_id=session.id)
    assert got is not None
    assert [e.content.parts[0].text for e in got.events if e.content and e.content.parts] == ["hello", "hi Ada"]
    assert got.state == {"topic": "coffee", "app:theme": "light", "user:lang": "fr"}
    assert got.last_update_time == 101.0
    assert await service.get_user_state(app_name="app", user_id="ada") == {"lang": "fr"}
    bob = await service.get_session(app_name="app", user_id="bob", session_id=session.id)
    assert bob is not None
    assert bob.events == []
    assert bob.state["app:theme"] == "light"
    assert "user:lang" not in bob.state

    recent = await service.get_session(
        app_name="app", user_id="ada", session_id=session.id, config=GetSessionConfig(num_recent_events=1)
    )
    assert recent is not None
    assert len(recent.events) == 1
    later = await service.get_session(
        app_name="app", user_id="ada", session_id=session.id, config=GetSessionConfig(after_timestamp=100.5)
    )
    assert later is not None
    assert [e.timestamp for e in later.events] == [101.0]

    listed = await service.list_sessions(app_name="app")
    assert {(s.user_id, s.id) for s in listed.sessions} == {("ada", session.id), ("bob", session.id)}
    assert all(s.events == [] for s in listed.sessions)
    assert [s.user_id for s in (await service.list_sessions(app_name="app", user_id="bob")).sessions] == ["bob"]
    assert await service.get_session(app_name="other-app", user_id="ada", session_id=session.id) is None

    await service.delete_session(app_name="app", user_id="ada", session_id=session.id)
    assert await service.get_session(app_name="app", user_id="ada", session_id=session.id) is None
    with pytest.raises(SessionNotFoundError):
        await service.append_event(session, _event("user", "too late", 102.0))


async def test_an_event_delivered_twice_is_stored_once(store: PostgresSessionStore) -> None:
    service = PostgresSessionService(store)
    session = await service.create_session(app_name="app", user_id="ada")
    event = _event("user", "once", 1.0)
    await service.append_event(session, event)
    await service.append_event(session, event)
    got = await service.get_session(app_name="app", user_id="ada", session_id=session.id)
    assert got is not None
    assert len(got.events) == 1
    assert got.events[0] == event


class _OfflineLlm(BaseLlm):
    """An ADK model that answers from the request alone (no network): it remembers "my
    name is X" from earlier user turns."""

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        texts = [p.text for c in llm_request.contents if c.role == "user" for p in c.parts or [] if p.text]
        names = [t.split("is", 1)[1].strip(" .") for t in texts[:-1] if "name is" in t]
        reply = f"You are {names[-1]}." if names and "?" in texts[-1] else f"Noted ({len(texts)} user turns)."
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=reply)]))


async def test_adks_runner_remembers_across_turns(store: PostgresSessionStore) -> None:
    """ADK's own runner, with an offline model, on PostgresSessionService."""
    service = PostgresSessionService(store)
    agent = LlmAgent(name="helper", model=_OfflineLlm(model="offline"), instruction="Be brief.")
    runner = Runner(app_name="demo", agent=agent, session_service=service)
    session = await service.create_session(app_name="demo", user_id="ada")

    async def ask(text: str) -> str:
        message = types.Content(role="user", parts=[types.Part(text=text)])
        replies = [
            e.content.parts[0].text
            async for e in runner.run_async(user_id="ada", session_id=session.id, new_message=message)
            if e.content and e.content.parts and e.author == "helper"
        ]
        return replies[-1] or ""

    assert await ask("My name is Ada.") == "Noted (1 user turns)."
    # A new runner (a restart) reads the conversation back from PostgreSQL.
    runner = Runner(app_name="demo", agent=agent, session_service=PostgresSessionService(store))
    assert await ask("What is my name?") == "You are Ada."
    stored = await store.get_messages(f"demo:ada:{session.id}")
    assert [m.role for m in stored] == ["user", "assistant", "user", "assistant"]


async def test_a_state_value_json_cannot_hold_is_kept_as_text(store: PostgresSessionStore) -> None:
    # As ADK's own services do: the event is stored, the value as its text.
    service = PostgresSessionService(store)
    session = await service.create_session(app_name="app", user_id="ada")
    event = Event(
        invocation_id="inv", author="user", actions=EventActions(state_delta={"callback": lambda: 1, "ok": 2})
    )
    await service.append_event(session, event)
    got = await service.get_session(app_name="app", user_id="ada", session_id=session.id)
    assert got is not None
    assert len(got.events) == 1
    assert got.state["ok"] == 2
    assert isinstance(got.state["callback"], str)


@pytest.mark.parametrize("reverse", [False, True])
async def test_events_with_one_timestamp_come_back_in_append_order(store: PostgresSessionStore, reverse: bool) -> None:
    # ADK's database service breaks timestamp ties by event id; convostore never reorders:
    # events come back in the order they were appended, whatever their timestamps and ids.
    service = PostgresSessionService(store)
    session = await service.create_session(app_name="app", user_id="ada")
    ids = ["event_a", "event_m", "event_z"][:: -1 if reverse else 1]
    for event_id in ids:
        await service.append_event(session, Event(author="user", id=event_id, timestamp=100.0))
    got = await service.get_session(app_name="app", user_id="ada", session_id=session.id)
    assert got is not None
    assert [e.id for e in got.events] == ids


async def test_two_holders_of_a_session_keep_each_others_state(store: PostgresSessionStore) -> None:
    service = PostgresSessionService(store)
    created = await service.create_session(app_name="app", user_id="ada", state={"kept": 0})
    first = await service.get_session(app_name="app", user_id="ada", session_id=created.id)
    second = await service.get_session(app_name="app", user_id="ada", session_id=created.id)
    assert first is not None
    assert second is not None
    await service.append_event(first, _event("user", "one", first.last_update_time + 1, {"a": 1}))
    # The second copy was loaded before the first appended: as in ADK's database service it
    # is stale, and nothing of its event is written (not its state, not the event).
    with pytest.raises(StaleSessionError):
        await service.append_event(second, _event("helper", "two", first.last_update_time + 1, {"b": 2}))
    got = await service.get_session(app_name="app", user_id="ada", session_id=created.id)
    assert got is not None
    assert got.state == {"kept": 0, "a": 1}
    assert [e.author for e in got.events] == ["user"]
    # Reloaded, it appends; each holder's key is kept, the caller's other keys are not written.
    second = got
    second.state["local only"] = True  # not in a delta: ADK does not store it
    await service.append_event(second, _event("helper", "two", got.last_update_time + 1, {"b": 2}))
    with pytest.raises(StaleSessionError):  # the first copy is now the stale one
        await service.append_event(first, _event("user", "three", got.last_update_time + 2, {"c": 3}))
    final = await service.get_session(app_name="app", user_id="ada", session_id=created.id)
    assert final is not None
    assert final.state == {"kept": 0, "a": 1, "b": 2}
    assert [e.author for e in final.events] == ["user", "helper"]


async def test_two_holders_appending_at_once_lose_no_key(store: PostgresSessionStore) -> None:
    service = PostgresSessionService(store)
    created = await service.create_session(app_name="app", user_id="ada")
    copies = [await service.get_session(app_name="app", user_id="ada", session_id=created.id) for _ in range(2)]
    results = await asyncio.gather(
        *(
            service.append_event(c, _event("user", f"copy {i}", c.last_update_time + 1, {f"k{i}": i}))
            for i, c in enumerate(copies)
            if c is not None
        ),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1
    assert isinstance(refused[0], StaleSessionError)
    loser = copies[results.index(refused[0])]
    assert loser is not None
    reloaded = await service.get_session(app_name="app", user_id="ada", session_id=created.id)
    assert reloaded is not None
    i = results.index(refused[0])
    await service.append_event(reloaded, _event("user", "again", reloaded.last_update_time + 1, {f"k{i}": i}))
    final = await service.get_session(app_name="app", user_id="ada", session_id=created.id)
    assert final is not None
    assert final.state == {"k0": 0, "k1": 1}
    assert len(final.events) == 2


async def test_a_retried_append_event_is_not_stale(store: PostgresSessionStore) -> None:
    service = PostgresSessionService(store)
    created = await service.create_session(app_name="app", user_id="ada")
    copy = await service.get_session(app_name="app", user_id="ada", session_id=created.id)
    assert copy is not None
    event = _event("user", "once", copy.last_update_time + 1, {"a": 1})
    await service.append_event(created, event)
    await service.append_event(copy, event)  # the same event again, from a copy made before it
    got = await service.get_session(app_name="app", user_id="ada", session_id=created.id)
    assert got is not None
    assert got.state == {"a": 1}
    assert len(got.events) == 1
