"""The synchronous facade: the same store, the same errors, safe from many threads."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from convostore import (
    NewMessage,
    PostgresSessionStore,
    SessionNotFound,
    SessionOwnershipError,
    StoreClosed,
    SyncSessionStore,
    Window,
)


@pytest.fixture
def sync_store(database_url: str, schema_name: str) -> Iterator[SyncSessionStore]:
    with SyncSessionStore(database_url, schema=schema_name) as store:
        yield store


def test_the_store_works_from_plain_code(sync_store: SyncSessionStore) -> None:
    session = sync_store.create_session("alice", "helper", {"topic": "sync"})
    stored = sync_store.add_messages(session.id, [NewMessage("user", "hi"), NewMessage("assistant", "hello")])
    assert [m.seq for m in stored] == [1, 2]
    assert [m.content for m in sync_store.get_messages(session.id, window=Window(turns=1))] == ["hi", "hello"]
    assert sync_store.list_sessions()[0].id == session.id
    assert sync_store.search("hello")[0].session_id == session.id
    popped = sync_store.pop_message(session.id)
    assert popped is not None
    assert popped.content == "hello"
    lines = list(sync_store.export_jsonl())
    assert len(lines) == 3  # the session, its message, the end line
    assert sync_store.delete_session(session.id)


def test_errors_are_the_stores(sync_store: SyncSessionStore) -> None:
    with pytest.raises(SessionNotFound):
        sync_store.add_messages("nobody", [NewMessage("user", "x")])
    sync_store.add_messages("mine", [NewMessage("user", "x")], user_id="alice")
    with pytest.raises(SessionOwnershipError):
        sync_store.scoped(user="bob").get_messages("mine")


def test_many_threads_append_at_once_and_each_keeps_its_order(sync_store: SyncSessionStore) -> None:
    sync_store.add_messages("shared", [NewMessage("user", "start")], user_id="u")
    errors: list[BaseException] = []

    def write(t: int) -> None:
        try:
            for i in range(25):
                sync_store.add_messages("shared", [NewMessage("user", f"t{t}-{i}")])
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = sync_store.get_messages("shared")
    assert len(stored) == 1 + 8 * 25
    assert len({m.content for m in stored}) == len(stored)
    for t in range(8):
        assert [m.content for m in stored if m.content.startswith(f"t{t}-")] == [f"t{t}-{i}" for i in range(25)]


def test_a_closed_store_says_so(database_url: str, schema_name: str) -> None:
    store = SyncSessionStore(database_url, schema=schema_name)
    store.add_messages("s", [NewMessage("user", "x")], user_id="u")
    view = store.scoped(user="u")
    view.close()  # a view closes nothing
    assert len(view.get_messages("s")) == 1
    store.close()
    store.close()
    with pytest.raises(StoreClosed):
        store.get_messages("s")


def _public(cls: type, *, coroutines: bool) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_") and inspect.iscoroutinefunction(member) == coroutines
    }


def test_every_async_method_of_the_store_has_a_blocking_twin_with_its_signature() -> None:
    store_methods = _public(PostgresSessionStore, coroutines=True)
    sync_methods = _public(SyncSessionStore, coroutines=False)
    assert set(store_methods) - set(sync_methods) == set()
    for name, method in store_methods.items():
        twin = getattr(SyncSessionStore, name)
        assert not inspect.iscoroutinefunction(twin), name
        if name in ("connect", "close"):  # the facade's own lifecycle
            continue
        assert inspect.signature(twin).parameters.keys() == inspect.signature(method).parameters.keys(), name
        assert twin.__doc__ == method.__doc__, name


def test_agent_state_from_plain_code(sync_store: SyncSessionStore) -> None:
    assert sync_store.get_state("helper") == {}
    assert sync_store.update_state("helper", {"mood": "calm"}) == {"mood": "calm"}
    assert sync_store.update_state("helper", {"lang": "fr"}, user_id="alice") == {"lang": "fr"}
    assert sync_store.get_state("helper") == {"mood": "calm"}
    assert sync_store.get_state("helper", user_id="alice") == {"lang": "fr"}


def test_the_sweeper_runs_in_the_facades_loop(sync_store: SyncSessionStore) -> None:
    sweeper = sync_store.start_sweeper(3600)
    assert sweeper.running
    sync_store.stop_sweeper()
    assert not sweeper.running
