"""Export and import from the user's side: every line an import takes is one an append would
take, and a failed import stores nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from convostore import (
    BranchNotFound,
    ImportFileError,
    InvalidInput,
    InvalidMessage,
    NewMessage,
    PostgresSessionStore,
    export_jsonl,
    import_jsonl,
)
from convostore.errors import ImportChecksumMismatch, ImportIncomplete
from convostore.transfer import MAX_IMPORT_SEQ, write_export

T0 = "2026-01-01T00:00:00+00:00"


def session_line(sid: str = "s1", **fields: Any) -> str:
    line = {"type": "session", "id": sid, "user_id": "u", "agent_name": "a", "metadata": {}, "created_at": T0,
            "updated_at": T0, "last_seq": 1}  # fmt: skip
    return json.dumps({**line, **fields})


def message_line(seq: int, sid: str = "s1", **fields: Any) -> str:
    line = {"type": "message", "session_id": sid, "id": f"m{seq}", "seq": seq, "role": "user", "content": f"c{seq}",
            "created_at": T0}  # fmt: skip
    return json.dumps({**line, **fields})


def branch_line(name: str, sid: str = "s1", parent: str = "main", fork_seq: int = 1) -> str:
    return json.dumps({"type": "branch", "session_id": sid, "name": name, "parent": parent, "fork_seq": fork_seq,
                       "created_at": T0, "deleted_at": None, "cleared_to": None})  # fmt: skip


def end_line(lines: list[str]) -> str:
    """The end line an export writes after *lines* (as the README describes it)."""
    kinds = [json.loads(line)["type"] for line in lines]
    digest = hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()
    counts = {"sessions": kinds.count("session"), "branches": kinds.count("branch"), "messages": kinds.count("message")}
    return json.dumps({"type": "end", "lines": len(lines), **counts, "sha256": digest})


def ended(lines: list[str]) -> list[str]:
    return [*lines, end_line(lines)]


async def stored(store: PostgresSessionStore) -> tuple[int, int, int]:
    """How many sessions, branches and messages the store's schema holds."""
    tables = ("agent_sessions", "conversation_branches", "conversation_messages")
    counts = [await store.pool.fetchval(f'SELECT count(*) FROM "{store.schema}".{t}') for t in tables]
    return counts[0], counts[1], counts[2]


async def refused(store: PostgresSessionStore, lines: list[str], error: type[Exception] = ImportFileError) -> Any:
    """Import *lines* expecting *error*; check that nothing was stored, and return the error."""
    with pytest.raises(error) as raised:
        await import_jsonl(store, ended(lines))
    assert await stored(store) == (0, 0, 0)
    return raised.value


# Lines that an append refuses (the message as add_messages would get it, and what it raises),
# each put on line 3 of an otherwise good file.
HOSTILE_MESSAGES: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "tool without tool_call_id": ({"role": "tool", "content": "42"}, InvalidMessage, "needs the tool_call_id"),
    "tool_calls of numbers": ({"role": "assistant", "content": "", "tool_calls": [1, 2]}, InvalidMessage,
                              "tool_calls[0] must be an object"),
    "tool call without id": ({"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]},
                             InvalidMessage, "needs a non-empty string 'id'"),
    "tool_call_id on a user message": ({"role": "user", "content": "x", "tool_call_id": "c1"}, InvalidMessage,
                                       "only a tool message has a tool_call_id"),
    "item without raw": ({"role": "item", "content": ""}, InvalidMessage, "give raw"),
    "lone surrogate": ({"role": "user", "content": "\ud800"}, InvalidMessage, "content"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE_MESSAGES))
async def test_import_refuses_each_message_an_append_refuses(store: PostgresSessionStore, case: str) -> None:
    fields, error, reason = HOSTILE_MESSAGES[case]
    # An append refuses it...
    await store.create_session("u", "a", session_id="probe")
    with pytest.raises(error):
        await store.add_messages("probe", [fields])
    await store.delete_session("probe")
    # ... and so does an import, naming the line, with the append's error as the cause.
    lines = [session_line(), message_line(1), message_line(2, **fields), message_line(3)]
    failure = await refused(store, lines)
    assert failure.line == 3
    assert str(failure).startswith("line 3: ")
    assert reason in str(failure)
    assert isinstance(failure.__cause__, error)


async def test_import_refuses_a_message_on_a_branch_the_file_does_not_declare(store: PostgresSessionStore) -> None:
    await store.create_session("u", "a", session_id="probe")
    with pytest.raises(BranchNotFound):
        await store.add_messages("probe", [NewMessage("user", "x")], branch="side")
    await store.delete_session("probe")
    failure = await refused(store, [session_line(), message_line(1), message_line(2, branch="side")])
    assert failure.line == 3
    assert "branch 'side', which session 's1' lacks" in str(failure)
    # Declared (after main's message it forks at), it imports.
    declared = [session_line(), branch_line("side"), message_line(1), message_line(2, branch="side")]
    report = await import_jsonl(store, ended(declared))
    assert report.messages_added == 2
    assert [m.content for m in await store.get_messages("s1", branch="side")] == ["c1", "c2"]


async def test_import_refuses_a_branch_forked_from_an_undeclared_one(store: PostgresSessionStore) -> None:
    failure = await refused(store, [session_line(), branch_line("twig", parent="side")])
    assert failure.line == 2
    assert "forks 'side'" in str(failure)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (message_line(2**63 - 1), "seq must be between 1 and"),
        (message_line(MAX_IMPORT_SEQ + 1), "seq must be between 1 and"),
        (message_line(0), "seq must be between 1 and"),
        (message_line(-1), "seq must be between 1 and"),
        (message_line(2, tokens=2**40), "tokens must be between"),
        (message_line(3, covers=[1, 2**63]), "covers[1] must be between"),
        (message_line(2, created_at="9999-12-31T23:00:00-05:00"), "outside the years"),
        (session_line("s2", last_seq=2**63 - 1), "last_seq must be between"),
        (branch_line("side", fork_seq=2**63 - 1), "fork_seq must be between"),
    ],
    ids=[
        "seq 2**63-1",
        "seq past the limit",
        "seq 0",
        "seq -1",
        "tokens past int",
        "covers past bigint",
        "time past the calendar in UTC",
        "last_seq 2**63-1",
        "fork_seq 2**63-1",
    ],
)
async def test_import_refuses_numbers_the_session_could_not_live_with(
    store: PostgresSessionStore, line: str, reason: str
) -> None:
    failure = await refused(store, [session_line(), message_line(1), line])
    assert failure.line == 3
    assert reason in str(failure)


async def test_a_session_imported_at_the_highest_seq_can_still_be_appended_to(store: PostgresSessionStore) -> None:
    report = await import_jsonl(store, ended([session_line(last_seq=MAX_IMPORT_SEQ), message_line(MAX_IMPORT_SEQ)]))
    assert report.messages_added == 1
    appended = await store.add_messages("s1", [NewMessage("user", f"after {i}") for i in range(3)])
    assert [m.seq for m in appended] == [MAX_IMPORT_SEQ + 1, MAX_IMPORT_SEQ + 2, MAX_IMPORT_SEQ + 3]


async def test_a_bad_line_after_rows_were_written_leaves_nothing(store: PostgresSessionStore) -> None:
    # Past the import's batch size, so rows were already sent when the bad line is read.
    good = [session_line(last_seq=1500)] + [message_line(seq) for seq in range(1, 1501)]
    failure = await refused(store, [*good, message_line(1501, role="tool")])
    assert failure.line == 1502
    assert isinstance(failure, InvalidInput)


# -- the end line ------------------------------------------------------------------------------


@pytest.fixture
async def target(store: PostgresSessionStore, database_url: str) -> AsyncIterator[PostgresSessionStore]:
    """A second, empty store (in a schema of its own) to import into."""
    copy = PostgresSessionStore(database_url, schema=f"{store.schema}_copy")
    try:
        async with copy:
            yield copy
    finally:
        await store.pool.execute(f'DROP SCHEMA IF EXISTS "{store.schema}_copy" CASCADE')


async def exported(store: PostgresSessionStore, sessions: int = 5) -> list[str]:
    for i in range(sessions):
        s = await store.create_session(f"user{i % 2}", "a")
        await store.add_messages(s.id, [NewMessage("user", f"q{i}"), NewMessage("assistant", f"a{i} ☀")])
        if i == 0:
            await store.fork_session(s.id, "retry", at_seq=1)
    return [line async for line in export_jsonl(store)]


async def test_an_export_ends_with_counts_and_the_checksum_of_its_bytes(
    store: PostgresSessionStore, target: PostgresSessionStore
) -> None:
    lines = await exported(store)
    *body, end = lines
    assert json.loads(end) == json.loads(end_line(body))
    assert json.loads(end) | {"sha256": ""} == {"type": "end", "lines": 16, "sessions": 5, "branches": 1,
                                                "messages": 10, "sha256": ""}  # fmt: skip
    report = await import_jsonl(target, lines)
    assert (report.sessions_added, report.messages_added, report.verified) == (5, 10, True)
    assert [line async for line in export_jsonl(target)] == lines


@pytest.mark.parametrize("keep", [1, 4, 15], ids=["first line", "some sessions", "all but the end line"])
async def test_an_export_cut_after_a_whole_line_is_refused(
    store: PostgresSessionStore, target: PostgresSessionStore, keep: int
) -> None:
    lines = await exported(store)
    failure = await refused_plain(target, lines[:keep], ImportIncomplete)
    assert failure.line == keep + 1
    assert f"no end line after line {keep}" in str(failure)
    assert isinstance(failure, ImportFileError)


async def test_an_export_cut_inside_a_line_is_refused(
    store: PostgresSessionStore, target: PostgresSessionStore
) -> None:
    lines = await exported(store)
    cut = [*lines[:6], lines[6][: len(lines[6]) // 2]]
    with pytest.raises(ImportIncomplete) as raised:
        await import_jsonl(target, cut)
    assert raised.value.line == 7
    assert "cut short" in str(raised.value)
    assert await stored(target) == (0, 0, 0)
    # Taken as partial, a torn line is still no line to import.
    with pytest.raises(ImportIncomplete):
        await import_jsonl(target, cut, allow_partial=True)
    assert await stored(target) == (0, 0, 0)


async def test_a_file_without_an_end_line_imports_only_when_allowed_partial(store: PostgresSessionStore) -> None:
    lines = [session_line(), message_line(1)]
    failure = await refused_plain(store, lines, ImportIncomplete)
    assert failure.line == 3
    assert "allow_partial" in str(failure)
    report = await import_jsonl(store, lines, allow_partial=True)
    assert (report.messages_added, report.verified) == (1, False)
    assert [m.content for m in await store.get_messages("s1")] == ["c1"]


async def test_an_empty_file_is_refused(store: PostgresSessionStore) -> None:
    failure = await refused_plain(store, [], ImportIncomplete)
    assert failure.line == 1
    assert "empty" in str(failure)


def _first_messages(lines: list[str]) -> tuple[int, int]:
    """The positions of the first two message lines (two messages of one session)."""
    first, second = [n for n, line in enumerate(lines) if json.loads(line)["type"] == "message"][:2]
    return first, second


def _changed(lines: list[str]) -> list[str]:
    n, _ = _first_messages(lines)
    return [*lines[:n], lines[n].replace('"content": "', '"content": "changed '), *lines[n + 1 :]]


def _removed(lines: list[str]) -> list[str]:
    n, _ = _first_messages(lines)
    return [*lines[:n], *lines[n + 1 :]]


def _swapped(lines: list[str]) -> list[str]:
    n, m = _first_messages(lines)
    swapped = list(lines)
    swapped[n], swapped[m] = lines[m], lines[n]
    return swapped


def _end_changed(lines: list[str]) -> list[str]:
    return [*lines[:-1], lines[-1].replace('"sessions": 5', '"sessions": 4')]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (_changed, "its SHA-256"),
        (_removed, "lines 16 (the file has 15); messages 10 (the file has 9)"),
        (_swapped, "its SHA-256"),
        (_end_changed, "sessions 4 (the file has 5)"),
    ],
    ids=["a changed message", "a removed line", "lines swapped", "a changed end line"],
)
async def test_a_file_changed_after_export_is_refused(
    store: PostgresSessionStore, target: PostgresSessionStore, change: Any, said: str
) -> None:
    lines = change(await exported(store))
    for allow_partial in (False, True):  # an end line, when there is one, is always checked
        with pytest.raises(ImportChecksumMismatch) as raised:
            await import_jsonl(target, lines, allow_partial=allow_partial)
        assert raised.value.line == len(lines)
        assert said in str(raised.value)
        assert await stored(target) == (0, 0, 0)


async def test_a_line_after_the_end_line_is_refused(store: PostgresSessionStore, target: PostgresSessionStore) -> None:
    lines = await exported(store)
    failure = await refused_plain(target, [*lines, lines[0]], ImportFileError)
    assert failure.line == len(lines) + 1
    assert "after the end line" in str(failure)


async def refused_plain(store: PostgresSessionStore, lines: list[str], error: type[ImportFileError]) -> ImportFileError:
    """Import *lines* as they are, expecting *error*, and check that nothing was stored."""
    with pytest.raises(error) as raised:
        await import_jsonl(store, lines)
    assert await stored(store) == (0, 0, 0)
    return raised.value


# -- an export stopped part way (the command, in a process of its own) ---------------------------


async def _wait_for_lock_wait(conn: asyncpg.Connection, proc: asyncio.subprocess.Process, table: str) -> None:
    """Wait until the export's statement reading *table* (schema-qualified: other tests may share
    the server) waits for a lock the test holds.

    Polls without a deadline of its own (a loaded machine only makes it slower); fails if the
    export ends instead."""
    while True:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND backend_type = 'client backend'"
            " AND query NOT LIKE '%LOCK TABLE%' AND query LIKE $1",  # not autovacuum, nor the test's locks
            f"%{table}%",
        )
        if waiting:
            return
        if proc.returncode is not None:
            pytest.fail(f"the export ended (exit {proc.returncode}) before it waited on {table}")
        await asyncio.sleep(0.05)


def _default_signals() -> None:
    """In the child, before it runs: SIGINT and SIGTERM do what they do by default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "where"),
    [(signal.SIGINT, "file"), (signal.SIGTERM, "file"), (signal.SIGINT, "existing file"), (signal.SIGINT, "stdout")],
    ids=["SIGINT to a file", "SIGTERM to a file", "SIGINT over an older export", "SIGINT to stdout"],
)
async def test_an_interrupted_export_leaves_no_file_that_looks_complete(
    store: PostgresSessionStore, database_url: str, tmp_path: Path, sig: signal.Signals, where: str
) -> None:
    # One session more than the export reads per page: it stops between its pages, after 500.
    sessions = [session_line(f"s{i:04d}") for i in range(501)]
    lines = [line for i, s in enumerate(sessions) for line in (s, message_line(1, f"s{i:04d}"))]
    assert (await import_jsonl(store, ended(lines))).sessions_added == 501
    output = tmp_path / "export.jsonl"
    if where == "existing file":
        output.write_text("an older export\n", encoding="utf-8")
    env = dict(os.environ, DATABASE_URL=database_url, CONVOSTORE_SCHEMA=store.schema)
    # Two connections hold the locks; a third watches (in a transaction, pg_stat_activity
    # would show the snapshot taken at its first read).
    messages_lock, sessions_lock = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    proc = None
    try:
        # Hold the export at its first session's messages, then let it run to the end of its
        # first page of sessions, where it waits to read the next one: there it is stopped.
        await messages_lock.execute(
            f'BEGIN; LOCK TABLE "{store.schema}".conversation_messages IN ACCESS EXCLUSIVE MODE'
        )
        args = ["export"] if where == "stdout" else ["export", "-o", str(output)]
        # As a terminal would start it: a runner that started the tests in the background
        # (SIGINT ignored, which children inherit) must not make the CLI deaf to Ctrl-C.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "convostore", *args, env=env, stdout=PIPE, stderr=PIPE,
            preexec_fn=_default_signals,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        # Read as it comes: a full pipe would hold the export in its writes instead.
        reading = asyncio.gather(proc.stdout.read(), proc.stderr.read())
        await _wait_for_lock_wait(watcher, proc, f'"{store.schema}".conversation_messages')
        await sessions_lock.execute(f'BEGIN; LOCK TABLE "{store.schema}".agent_sessions IN ACCESS EXCLUSIVE MODE')
        await messages_lock.execute("COMMIT")
        await _wait_for_lock_wait(watcher, proc, f'"{store.schema}".agent_sessions')
        proc.send_signal(sig)
        stdout, stderr = await reading
        await proc.wait()
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        for conn in (messages_lock, sessions_lock, watcher):
            await conn.close()
    assert proc.returncode == 128 + sig.value
    (said,) = stderr.decode().strip().splitlines()
    assert said.startswith(f"export interrupted by {sig.name} after 500 sessions and 500 messages (1000 lines): ")
    if where == "stdout":
        assert said.endswith("the output stops there, without its end line (import refuses it)")
        printed = stdout.decode().splitlines()
        assert len(printed) == 1000
        with pytest.raises(ImportIncomplete) as raised:
            await import_jsonl(store.scoped(tenant="elsewhere"), printed)
        assert raised.value.line == 1001
    elif where == "existing file":
        assert said.endswith(f"{output} keeps its previous content")
        assert output.read_text(encoding="utf-8") == "an older export\n"
    else:
        assert said.endswith(f"{output} was not written")
    # Nothing else is left beside it (no temporary file).
    assert sorted(os.listdir(tmp_path)) == (["export.jsonl"] if where == "existing file" else [])


async def test_an_export_to_a_file_is_complete_once_there(
    store: PostgresSessionStore, target: PostgresSessionStore, database_url: str, tmp_path: Path
) -> None:
    lines = await exported(store)
    output = tmp_path / "export.jsonl"
    env = dict(os.environ, DATABASE_URL=database_url, CONVOSTORE_SCHEMA=store.schema)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "convostore", "export", "-o", str(output), env=env, stdout=PIPE, stderr=PIPE
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert stderr.decode().strip() == "exported 17 lines: 5 sessions, 1 branches, 10 messages and the end line"
    assert output.read_text(encoding="utf-8") == "".join(line + "\n" for line in lines)
    assert os.listdir(tmp_path) == ["export.jsonl"]
    dash = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "convostore", "export", "-o", "-", env=env, stdout=PIPE, stderr=PIPE
    )
    printed, _ = await dash.communicate()
    assert printed.decode() == output.read_text(encoding="utf-8")
    # The library writes files the same way.
    tally = await write_export(target, tmp_path / "empty.jsonl")
    assert (tally.lines, (tmp_path / "empty.jsonl").read_text(encoding="utf-8")) == (0, end_line([]) + "\n")
    missing = tmp_path / "no" / "such" / "dir.jsonl"
    with pytest.raises(FileNotFoundError) as raised:
        await write_export(store, missing)
    assert raised.value.filename == str(missing)
