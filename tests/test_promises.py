"""The promise under misuse and faults, tried from the user's side, one finding at a time.

Each test is a way the promise ("an acknowledged message is stored exactly once, in order,
never read or written by the wrong user; bad input gets one typed error and leaves nothing
half-written") was seen to break: other event loops, retried writes, the coalescer, deadlines,
poison rows, import across owners, secrets, typos, raw exceptions, terminal injection,
lifecycle, cleanup's cutoff and the Agents SDK's own conventions.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from agents import Agent, Runner
from typer.testing import CliRunner

from convostore import (
    ConfigurationError,
    ImportConflict,
    InvalidIdentifier,
    InvalidInput,
    InvalidMessage,
    InvalidMessageType,
    NewMessage,
    PostgresSessionStore,
    RetryPolicy,
    SchemaNotReady,
    SessionExists,
    StoreClosed,
    StoreTimeout,
    StoreUnavailable,
    _schema,
    export_jsonl,
    import_jsonl,
)
from convostore._appends import Appender
from convostore._coalesce import AppendWriter
from convostore.cli import app
from convostore.openai_agents import OfflineModel, PostgresSession

from ._chaos import TcpProxy


async def _items(session: PostgresSession) -> list[Any]:
    """get_items, typed loosely: the SDK's item TypedDicts are a union of 30 shapes."""
    return list(await session.get_items())


def _store(database_url: str, schema: str, **kw: Any) -> PostgresSessionStore:
    return PostgresSessionStore(database_url, schema=schema, **kw)


async def _lock_session(database_url: str, schema: str, session_id: str) -> asyncpg.Connection:
    """Another transaction holding the session's row (as a long write would)."""
    conn = await asyncpg.connect(database_url)
    await conn.execute("BEGIN")
    await conn.execute(f'SELECT 1 FROM "{schema}".agent_sessions WHERE id = $1 FOR UPDATE', session_id)
    return conn


# -- 1. other event loops --------------------------------------------------------------------


def test_runner_run_sync_twice_on_one_store(database_url: str, schema_name: str) -> None:
    store = _store(database_url, schema_name)
    agent = Agent(name="A", model=OfflineModel())
    session = PostgresSession("sync-conv", store=store, user_id="u")
    # Each run_sync call runs (and closes) its own event loop.
    Runner.run_sync(agent, "My name is Alice", session=session)
    second = Runner.run_sync(agent, "What's my name?", session=session)
    assert "Alice" in str(second.final_output)

    async def read() -> list[str]:
        try:
            return [m.role for m in await store.get_messages("sync-conv")]
        finally:
            await store.close()

    assert asyncio.run(read()) == ["user", "assistant", "user", "assistant"]


def test_one_session_from_worker_threads(database_url: str, schema_name: str) -> None:
    store = _store(database_url, schema_name)
    session = PostgresSession("threads", store=store, user_id="u")
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(20):
                asyncio.run(session.add_items([{"role": "user", "content": f"{w}:{i}"}]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    async def check() -> None:
        try:
            items: list[Any] = list(await session.get_items())
            assert len(items) == 80
            for w in range(4):  # each thread's appends in the order it made them
                mine = [int(str(i["content"]).split(":")[1]) for i in items if str(i["content"]).startswith(f"{w}:")]
                assert mine == list(range(20))
        finally:
            await store.close()

    asyncio.run(check())


# -- 2. retried SDK writes ----------------------------------------------------------------------


async def test_a_retried_add_items_after_a_lost_acknowledgement_is_stored_once(
    database_url: str, schema_name: str
) -> None:
    async with _store(database_url, schema_name) as setup:
        await setup.migrate()
    proxy = TcpProxy.to(database_url)
    store = PostgresSessionStore(proxy.url, schema=schema_name, retry=RetryPolicy(attempts=1))
    try:
        session = PostgresSession("retried", store=store, user_id="u")
        await session.add_items([{"role": "user", "content": "warm-up"}])
        items: list[Any] = [{"role": "user", "content": "lost-ack-marker"}, {"role": "assistant", "content": "ok"}]
        proxy.lose_reply_to(b"lost-ack-marker")
        with pytest.raises(StoreUnavailable):  # committed, but the caller cannot know
            await session.add_items(items)
        assert proxy.replies_lost == 1
        await session.add_items(items)  # the caller's retry
        contents = [i["content"] for i in await _items(session)]
        assert contents == ["warm-up", "lost-ack-marker", "ok"]
        # The same items added again later, in a new call, are a new turn.
        await session.add_items(items)
        assert len(await session.get_items()) == 5
        # Across processes: the caller's own idempotency key.
        other = PostgresSession("retried", store=store, user_id="u")
        await other.add_items([{"role": "user", "content": "k"}], idempotency_key="turn-7")
        await PostgresSession("retried", store=store, user_id="u").add_items(
            [{"role": "user", "content": "k"}], idempotency_key="turn-7"
        )
        assert [i["content"] for i in await _items(session)].count("k") == 1
    finally:
        await store.close()
        proxy.close()


# -- 3. the coalescer -------------------------------------------------------------------------


async def test_a_cancelled_caller_returns_only_once_its_write_is_settled(database_url: str, schema_name: str) -> None:
    async with _store(database_url, schema_name) as store:
        s = await store.create_session("u", "a")
        blocker = await _lock_session(database_url, schema_name, s.id)
        first = asyncio.create_task(store.add_message(s.id, "user", "first", message_id="m1"))
        await asyncio.sleep(0.2)  # sent, and waiting for the row lock
        first.cancel()
        await asyncio.sleep(0.3)
        assert not first.done(), "the cancelled caller returned while its write was in flight"
        await blocker.execute("ROLLBACK")
        await blocker.close()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = await store.add_message(s.id, "user", "second", message_id="m2")
        stored = await store.get_messages(s.id)
        assert [m.id for m in stored] == ["m1", "m2"]  # never reordered
        assert second.seq == 2


async def test_an_unexpected_error_in_a_flush_settles_every_waiter(
    database_url: str, schema_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _store(database_url, schema_name) as store:
        sessions = [(await store.create_session("u", "a")).id for _ in range(8)]

        async def broken(self: Appender, batch: Any, *, deadline: float | None = None) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(Appender, "many", broken)
        calls = [store.add_message(sessions[i % 8], "user", str(i)) for i in range(32)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        failed = [r for r in results if isinstance(r, Exception)]
        assert failed, "no batch was coalesced"
        assert all(type(r).__name__ == "DatabaseError" for r in failed)


async def test_a_locked_session_does_not_stall_its_neighbours(database_url: str, schema_name: str) -> None:
    async with _store(database_url, schema_name) as store:
        held = await store.create_session("u", "a")
        others = [(await store.create_session("u", "a")).id for _ in range(16)]
        await asyncio.gather(*(store.add_message(sid, "user", "warm") for sid in [held.id, *others]))
        blocker = await _lock_session(database_url, schema_name, held.id)
        try:
            stuck = asyncio.create_task(store.add_message(held.id, "user", "waits for the lock"))
            await asyncio.sleep(0.05)
            # The lock is held until the blocker rolls back: the others are stored while it is.
            await asyncio.gather(*(store.add_message(sid, "user", "free") for sid in others))
            assert not stuck.done()
            for sid in others:
                assert [m.content for m in await store.get_messages(sid)] == ["warm", "free"]
        finally:
            await blocker.execute("ROLLBACK")
            await blocker.close()
        await stuck


@pytest.mark.single_node
async def test_a_timed_out_batch_is_not_run_again_alone(database_url: str, schema_name: str) -> None:
    appends: list[str] = []

    def log(record: Any) -> None:
        if "convostore_append(" in record.query or record.query.lstrip().startswith("WITH b AS"):
            appends.append(record.query)  # the function, or the one-statement lone append

    async def attach(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(log)

    async with _store(database_url, schema_name, command_timeout=0.5, connect_kwargs={"init": attach}) as store:
        sessions = [(await store.create_session("u", "a")).id for _ in range(8)]
        await asyncio.gather(*(store.add_message(sid, "user", "warm") for sid in sessions))  # open connections
        await store.pool.execute(
            f"""
            CREATE FUNCTION "{schema_name}".slow() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.content = 'slow' THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$;
            CREATE TRIGGER slow BEFORE INSERT ON "{schema_name}".conversation_messages
                FOR EACH ROW EXECUTE FUNCTION "{schema_name}".slow();
            """
        )
        appends.clear()
        # Two slow lone appends fill both statement slots; six more queue and leave together,
        # one of them slow, so that their shared statement times out.
        lone = [asyncio.create_task(store.add_message(sessions[i], "user", "slow")) for i in range(2)]
        await asyncio.sleep(0.05)
        queued = [store.add_message(sessions[i], "user", "slow" if i == 2 else "quick") for i in range(2, 8)]
        results = await asyncio.gather(*lone, *queued, return_exceptions=True)
        assert all(isinstance(r, StoreTimeout) for r in results), results
        assert len(appends) == 3, "requests of a timed-out batch were sent again alone"
        assert [m.content for m in await store.get_messages(sessions[3])] == ["warm"]


async def test_waiting_for_room_in_the_queue_is_bounded(database_url: str, schema_name: str) -> None:
    async with _store(database_url, schema_name) as store:
        s = await store.create_session("u", "a")
        writer = AppendWriter(Appender(store._scope.runner, store._scope.queries), max_in_flight=1, max_pending=1)
        blocker = await _lock_session(database_url, schema_name, s.id)
        try:
            from convostore._appends import AppendRequest
            from convostore._validate import message_row

            def request(text: str) -> AppendRequest:
                return AppendRequest(store.tenant, s.id, [message_row({"role": "user", "content": text})])

            loop = asyncio.get_running_loop()
            occupying = asyncio.create_task(writer.submit(request("a"), loop.time() + 5))
            await asyncio.sleep(0.05)
            # Refused by its own deadline, while the request it waits behind holds on (5 s).
            with pytest.raises(StoreTimeout):
                await writer.submit(request("b"), loop.time() + 0.3)
            assert not occupying.done()
        finally:
            await blocker.execute("ROLLBACK")
            await blocker.close()
        await occupying


# -- 4. deadlines -----------------------------------------------------------------------------


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in held:
        w.transport.abort()
    server.close()


async def test_a_silent_server_fails_the_call_within_its_deadline(silent_server: int) -> None:
    store = PostgresSessionStore(
        f"postgresql://u@127.0.0.1:{silent_server}/db", retry=RetryPolicy(attempts=2, deadline=2.0)
    )
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        await store.get_session("x")
    # Bounded by the call's deadline, not by the connect and statement timeouts (60 s and more);
    # the margin is for a busy machine.
    assert time.monotonic() - start < 20
    assert str(raised.value).strip()
    await store.close()


def test_the_cli_against_a_silent_server_exits_within_the_deadline(silent_server_thread: int) -> None:
    env = dict(os.environ, CONVOSTORE_RETRY_DEADLINE="2")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "convostore", "--database-url", f"postgresql://u@127.0.0.1:{silent_server_thread}/d",
         "stats"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - start < 40  # the deadline is 2 s; the margin is for a busy machine
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: cannot connect to postgresql://u@127.0.0.1:")
    assert len(line) > len("error: cannot connect to postgresql://u@127.0.0.1:1/d: ")


@pytest.fixture
def silent_server_thread() -> Iterator[int]:
    """The silent server, for a subprocess (its own thread and loop)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for s in accepted:
        s.close()
    listener.close()


# -- 5. poison rows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": 10**12},
        {"expires_in": 10**12},
        {"ttl": timedelta(days=999_999_999)},
        {"ttl": float("nan")},
        {"expires_in": float("inf")},
        {"ttl": -1},
    ],
)
async def test_durations_that_cannot_be_read_back_are_refused_before_writing(
    store: PostgresSessionStore, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput):
        await store.create_session("poison", "a", **kwargs)
    ok = await store.create_session("poison", "a")
    with pytest.raises(InvalidInput):
        await store.set_expiry(ok.id, **kwargs)
    with pytest.raises(InvalidInput):
        await store.delete_idle_sessions(kwargs.get("ttl", kwargs.get("expires_in")))
    # Everything of that user still reads.
    assert [s.id for s in await store.get_user_sessions("poison")] == [ok.id]
    assert len([line async for line in export_jsonl(store, user_id="poison")]) == 2  # the session, and the end line


def test_cleanup_with_an_age_past_the_calendar_is_a_usage_error(database_url: str, schema_name: str) -> None:
    env = {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}
    result = CliRunner().invoke(app, ["cleanup", "--older-than", "1000000000d"], env=env)
    assert result.exit_code == 2
    assert "--older-than" in result.output


# -- 6. import across owners ------------------------------------------------------------------


def _session_line(sid: str, user: str, agent: str = "a") -> str:
    return json.dumps(
        {"type": "session", "id": sid, "user_id": user, "agent_name": agent, "metadata": {},
         "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00", "last_seq": 1}
    )  # fmt: skip


def _message_line(sid: str, mid: str, seq: int, content: str) -> str:
    return json.dumps(
        {"type": "message", "session_id": sid, "id": mid, "seq": seq, "role": "user", "content": content,
         "created_at": "2026-01-01T00:00:00+00:00"}
    )  # fmt: skip


async def test_import_never_writes_into_another_users_session(store: PostgresSessionStore) -> None:
    await store.create_session("alice", "a", session_id="shared")
    await store.add_message("shared", "user", "alice's own", message_id="m0")
    hostile = [_session_line("shared", "mallory"), _message_line("shared", "evil", 2, "injected")]
    with pytest.raises(ImportConflict) as raised:
        await import_jsonl(store, hostile, allow_partial=True)
    assert raised.value.conflicts[0][0] == 1
    report = await import_jsonl(store, hostile, on_conflict="skip", allow_partial=True)
    assert report.sessions_added == report.messages_added == 0
    assert report.messages_skipped == 1
    assert [c[0] for c in report.conflicts] == [1]
    assert [m.content for m in await store.get_messages("shared")] == ["alice's own"]


async def test_import_reports_rows_that_differ_as_conflicts_not_as_present(store: PostgresSessionStore) -> None:
    await store.create_session("alice", "a", session_id="s1")
    await store.add_message("s1", "user", "original", message_id="m1")
    changed = [_session_line("s1", "alice"), _message_line("s1", "m1", 1, "rewritten")]
    with pytest.raises(ImportConflict, match="m1"):
        await import_jsonl(store, changed, allow_partial=True)
    same_seq = [_session_line("s1", "alice"), _message_line("s1", "other", 1, "x"), _message_line("s1", "new", 2, "y")]
    with pytest.raises(ImportConflict, match="seq 1"):
        await import_jsonl(store, same_seq, allow_partial=True)
    assert [m.content for m in await store.get_messages("s1")] == ["original"]  # nothing half-written
    report = await import_jsonl(store, same_seq, on_conflict="skip", allow_partial=True)
    assert (report.messages_added, len(report.conflicts)) == (1, 1)
    assert [m.content for m in await store.get_messages("s1")] == ["original", "y"]


# -- 7. secrets -------------------------------------------------------------------------------


async def test_a_password_in_the_query_string_never_appears_in_errors(caplog: pytest.LogCaptureFixture) -> None:
    store = PostgresSessionStore(
        "postgresql://alice@127.0.0.1:1/db?password=s3cret-pw&sslmode=disable",
        retry=RetryPolicy(attempts=3, initial_backoff=0.01, deadline=5),
    )
    with caplog.at_level("DEBUG", logger="convostore"), pytest.raises(StoreUnavailable) as raised:
        await store.get_session("x")
    text = caplog.text + str(raised.value) + repr(raised.value)
    assert "s3cret-pw" not in text
    assert "password=***" in str(raised.value)


# -- 8. typos never create schemas ------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["delete-user", "alice", "--yes"],
        ["stats"],
        ["sessions", "list", "--user", "alice"],
        ["cleanup", "--older-than", "30d"],
        ["sweep"],
        ["export"],
    ],
)
def test_read_and_delete_commands_refuse_a_missing_schema(
    database_url: str, schema_name: str, command: list[str]
) -> None:
    typo = schema_name + "_typo"
    result = CliRunner().invoke(app, ["--schema", typo, *command], env={"DATABASE_URL": database_url})
    assert result.exit_code == 1, result.output
    assert typo in result.output
    assert len(result.output.strip().splitlines()) == 1

    async def exists() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            return bool(await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", typo))
        finally:
            await conn.close()

    assert not asyncio.run(exists())


async def test_the_library_can_refuse_to_migrate_too(database_url: str, schema_name: str) -> None:
    store = _store(database_url, schema_name, apply_migrations=False)
    with pytest.raises(SchemaNotReady, match=schema_name):
        await store.get_session("x")
    await store.close()


# -- 9. raw exceptions ------------------------------------------------------------------------


@pytest.fixture
def cli_env(database_url: str, schema_name: str) -> dict[str, str]:
    async def migrate() -> None:
        async with _store(database_url, schema_name) as store:
            await store.create_session("alice", "a", session_id="s1")

    asyncio.run(migrate())
    return {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}


def _one_line_error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ")
    return str(line)


def test_importing_a_binary_file_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 10)
    assert "line 1: not UTF-8" in _one_line_error(CliRunner().invoke(app, ["import", str(path)], env=cli_env))


def test_export_into_a_missing_directory_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir.jsonl"
    result = CliRunner().invoke(app, ["export", "-o", str(target)], env=cli_env)
    assert "No such file or directory" in _one_line_error(result)


def test_a_data_dir_that_is_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    from convostore.embedded import embedded_url

    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    with pytest.raises(ConfigurationError, match="not-a-dir"):
        embedded_url(a_file)
    env = dict(os.environ, CONVOSTORE_DATA_DIR=str(a_file))
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "convostore", "stats"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: cannot keep the embedded PostgreSQL's data in")


async def test_misuse_gets_typed_errors(store: PostgresSessionStore) -> None:
    with pytest.raises(InvalidInput):
        await store.get_user_sessions("u", before="garbage")  # type: ignore[arg-type]
    await store.create_session("u", "a", session_id="taken")
    with pytest.raises(SessionExists, match="taken"):
        await store.create_session("u", "a", session_id="taken")


def test_a_refusing_server_is_one_line_without_warnings_first() -> None:
    env = dict(os.environ, CONVOSTORE_RETRY_DEADLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "convostore", "--database-url", "postgresql://x@127.0.0.1:1/x", "stats"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr


# -- 10. terminal injection ------------------------------------------------------------------


def test_stored_escape_sequences_are_shown_not_obeyed(database_url: str, schema_name: str) -> None:
    async def seed() -> None:
        async with _store(database_url, schema_name) as store:
            await store.create_session("u", "a", {"title": "\x1b[2J\x1b[31mfake"}, session_id="s")
            await store.add_message("s", "user", "clear \x1b[2J\x1b]0;title\x07 bell \x9b31m\u202eevil")

    asyncio.run(seed())
    env = {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}
    for args in (["sessions", "show", "s"], ["sessions", "list", "--user", "u"], ["sessions", "show", "s", "--json"]):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0
        for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
            assert raw not in result.output, (args, result.output)
    shown = CliRunner().invoke(app, ["sessions", "show", "s"], env=env).output
    assert "\\x1b[2J" in shown


# -- 11. lifecycle ----------------------------------------------------------------------------


async def test_concurrent_connects_open_one_pool_and_close_leaves_nothing(database_url: str, schema_name: str) -> None:
    name = f"cs-{schema_name}"
    settings = {"server_settings": {"application_name": name}}
    store = _store(database_url, schema_name, min_size=2, max_size=2, connect_kwargs=settings)
    await asyncio.gather(store.connect(), store.connect(), store.connect())

    async def connections() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name))
        finally:
            await conn.close()

    assert await connections() == 2
    await store.close()
    assert await connections() == 0
    with pytest.raises(StoreClosed):
        await store.get_session("x")


async def test_an_sdk_session_is_usable_before_any_connect(database_url: str, schema_name: str) -> None:
    store = _store(database_url, schema_name)
    session = PostgresSession("early", store=store, user_id="u")
    await session.add_items([{"role": "user", "content": "hi"}])
    assert await session.get_items() == [{"role": "user", "content": "hi"}]
    await store.close()


# -- 12. cleanup's cutoff ---------------------------------------------------------------------


async def test_cleanup_fixes_its_cutoff_at_the_start(store: PostgresSessionStore) -> None:
    old = [(await store.create_session("u", "a")).id for _ in range(3)]
    almost = await store.create_session("u", "a")
    await store.pool.execute(
        f"UPDATE \"{store.schema}\".agent_sessions SET updated_at = now() - interval '31 days' WHERE id = ANY($1)", old
    )
    # Idle for 30 days in 1.5 s: after the cleanup starts, before it ends.
    await store.pool.execute(
        f"UPDATE \"{store.schema}\".agent_sessions SET updated_at = now() - interval '30 days' + interval '1.5 s'"
        " WHERE id = $1",
        almost.id,
    )
    cutoff = await store.idle_cutoff(timedelta(days=30))
    await asyncio.sleep(2)
    counted = await store.count_idle_sessions(cutoff=cutoff)
    deleted = await store.delete_idle_sessions(timedelta(days=30) + timedelta(seconds=2.5), batch_size=1,
                                               on_batch=lambda n: time.sleep(0.5))  # fmt: skip
    assert counted == 3
    assert deleted == 3
    assert await store.get_session(almost.id) is not None


# -- 13. the Agents SDK's conventions ---------------------------------------------------------


async def test_sdk_session_settings_given_as_a_dict(store: PostgresSessionStore) -> None:
    session = PostgresSession("d", store=store, user_id="u", session_settings={"limit": 2})
    await session.add_items([{"role": "user", "content": str(i)} for i in range(5)])
    assert [i["content"] for i in await _items(session)] == ["3", "4"]
    assert session.session_settings is not None
    assert session.session_settings.limit == 2
    with pytest.raises(InvalidInput):
        PostgresSession("d", store=store, user_id="u", session_settings={"limit": "many", "nope": 1})


# -- 14. smaller ------------------------------------------------------------------------------


def test_smaller_cli_findings(cli_env: dict[str, str]) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["export", "--session", "nope"], env=cli_env)
    assert _one_line_error(missing).endswith("'nope' does not exist")
    for bad in ("30d30d", "6m", "1h2d", "3 months"):
        assert runner.invoke(app, ["cleanup", "--older-than", bad], env=cli_env).exit_code == 2, bad
    assert "ambiguous" in runner.invoke(app, ["cleanup", "--older-than", "6m"], env=cli_env).output
    version = runner.invoke(app, ["--version"], env=cli_env)
    assert version.exit_code == 0
    assert version.output.startswith("convostore ")
    schema = cli_env["CONVOSTORE_SCHEMA"]
    after = runner.invoke(app, ["stats", "--json", "--schema", schema], env={"DATABASE_URL": cli_env["DATABASE_URL"]})
    assert after.exit_code == 0, after.output
    assert json.loads(after.output)["sessions"] == 1
    url = cli_env["DATABASE_URL"]
    url_after = runner.invoke(app, ["stats", "--database-url", url], env={"CONVOSTORE_SCHEMA": schema})
    assert url_after.exit_code == 0, url_after.output


async def test_smaller_library_findings(store: PostgresSessionStore) -> None:
    s = await store.create_session("u", "a")
    with pytest.raises(InvalidMessage, match="tool_call_id"):
        await store.add_message(s.id, "tool", "output of what?")
    with pytest.raises(InvalidMessage, match="tool_calls"):
        await store.add_message(s.id, "assistant", "", tool_calls=[1, 2])
    with pytest.raises(InvalidIdentifier):
        await store.create_session("u", "a", session_id="   ")
    with pytest.raises(InvalidIdentifier):
        await store.get_messages("\t")
    assert await store.get_messages(s.id) == []
    # An SDK item that is no message is kept as given (as the SDK's sessions do; an
    # EncryptedSession stores such envelopes), as an 'item', not as an empty assistant message.
    session = PostgresSession("sdk", store=store, user_id="u")
    await session.add_items([{"foo": "bar"}])  # type: ignore[list-item]
    assert await session.get_items() == [{"foo": "bar"}]
    (stored,) = await store.get_messages("sdk")
    assert (stored.role, stored.content, stored.raw) == ("item", "", {"foo": "bar"})
    with pytest.raises(InvalidMessageType):  # also a TypeError, as the SDK's sessions raise
        await session.add_items([{"role": "user", "content": object()}])  # type: ignore[misc,list-item]
    with pytest.raises(TypeError):
        await store.get_messages(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Unknown session settings: limitt"):
        PostgresSession("x", store=store, session_settings={"limitt": 1})
    assert await store.add_messages(s.id, [NewMessage("user", "still fine")])


async def test_a_statement_error_while_opening_fails_at_once(
    database_url: str, schema_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(conn: Any, *args: Any) -> None:
        await conn.execute("SELECT * FROM no_such_table_anywhere")

    monkeypatch.setattr(_schema, "prepare", broken)
    store = _store(database_url, schema_name)
    start = time.monotonic()
    with pytest.raises(SchemaNotReady):
        await store.get_session("x")
    assert time.monotonic() - start < 20, "a refused statement was retried until the deadline (30 s)"
    await store.close()
