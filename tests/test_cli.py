"""The ``convostore`` command against a real PostgreSQL, through click's test runner."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner, Result

from convostore import MIGRATIONS, NewMessage, PostgresSessionStore
from convostore.cli import app, parse_duration

from .conftest import drop_schema


@pytest.fixture
def cli(database_url: str, schema_name: str) -> tuple[CliRunner, dict[str, str]]:
    env = {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}
    return CliRunner(), env


def invoke(cli: tuple[CliRunner, dict[str, str]], *args: str, stdin: str | None = None) -> Result:
    runner, env = cli
    return runner.invoke(app, list(args), env=env, input=stdin)


def seed(database_url: str, schema: str) -> dict[str, str]:
    """alice: 2 sessions (one idle for 40 days), bob: 1 session; returns their ids."""

    async def go() -> dict[str, str]:
        async with PostgresSessionStore(database_url, schema=schema) as store:
            a1 = await store.create_session("alice", "Support", {"title": "Refund"})
            a2 = await store.create_session("alice", "Sales")
            b1 = await store.create_session("bob", "Support")
            await store.add_messages(
                a1.id,
                [
                    NewMessage("user", "Where is my refund?\x00"),
                    NewMessage(
                        "assistant",
                        "",
                        tool_calls=[
                            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
                        ],
                    ),
                    NewMessage("tool", "refund sent\n" * 30, tool_call_id="c1"),
                    NewMessage("assistant", "It was sent yesterday. ☀", raw={"type": "message", "x": [1, 2.5]}),
                ],
            )
            await store.add_message(a2.id, "user", "hi")
            await store.add_message(b1.id, "user", "hello")
            await store.pool.execute(
                f"UPDATE \"{schema}\".agent_sessions SET updated_at = now() - interval '40 days' WHERE id = $1", a2.id
            )
            return {"a1": a1.id, "a2": a2.id, "b1": b1.id}

    return asyncio.run(go())


def count(database_url: str, schema: str, table: str) -> int:
    async def go() -> int:
        async with PostgresSessionStore(database_url, schema=schema) as store:
            return int(await store.pool.fetchval(f'SELECT count(*) FROM "{schema}".{table}'))

    return asyncio.run(go())


def _commands(group: TyperGroup, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, TyperGroup):
            yield from _commands(command, (*prefix, name))


def test_every_command_has_help(cli: tuple[CliRunner, dict[str, str]]) -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    commands = list(_commands(group))
    assert {c[-1] for c in commands} >= {
        "migrate", "cleanup", "sweep", "sessions", "list", "show", "export", "import", "delete-user", "stats",
    }  # fmt: skip
    for path in commands:
        result = invoke(cli, *path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        lines = [line for line in result.output.splitlines()[1:] if line.strip()]
        assert lines, f"{path} has no help text"
        assert not lines[0].strip().startswith("Options"), f"{path} has no help text"


def test_migrate_and_status(cli: tuple[CliRunner, dict[str, str]]) -> None:
    status = invoke(cli, "migrate", "--status")
    assert status.exit_code == 0
    assert status.output.count("pending") == len(MIGRATIONS)
    applied = invoke(cli, "migrate")
    assert applied.exit_code == 0
    assert "applied 0001_sessions_and_messages" in applied.output
    assert "up to date" in invoke(cli, "migrate").output
    after = invoke(cli, "migrate", "--status")
    assert "pending" not in after.output
    assert "UTC" in after.output


def test_cleanup_dry_run_then_delete(
    cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str
) -> None:
    ids = seed(database_url, schema_name)
    dry = invoke(cli, "cleanup", "--older-than", "30d", "--dry-run")
    assert dry.exit_code == 0
    assert "would delete 1 sessions" in dry.output
    assert count(database_url, schema_name, "agent_sessions") == 3
    assert "would delete 0" in invoke(cli, "cleanup", "--older-than", "30d", "--user", "bob", "--dry-run").output
    assert "would delete 0" in invoke(cli, "cleanup", "--older-than", "30d", "--agent", "Support", "--dry-run").output
    done = invoke(cli, "cleanup", "--older-than", "30d", "--batch-size", "1")
    assert done.exit_code == 0
    assert done.output.strip() == "deleted 1 sessions idle for more than 30d"
    remaining = json.loads(invoke(cli, "sessions", "list", "--user", "alice", "--json").output)
    assert [s["id"] for s in remaining] == [ids["a1"]]


@pytest.mark.parametrize("bad", ["3x", "", "d", "-5d", "0d", "5 days"])
def test_unparseable_durations_are_usage_errors(
    cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str, bad: str
) -> None:
    seed(database_url, schema_name)
    result = invoke(cli, "cleanup", "--older-than", bad)
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert "--older-than" in error_lines[0]
    assert count(database_url, schema_name, "agent_sessions") == 3


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("90min") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("1.5h") == timedelta(minutes=90)


def test_sessions_list_and_show(cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str) -> None:
    ids = seed(database_url, schema_name)
    table = invoke(cli, "sessions", "list", "--user", "alice")
    assert table.exit_code == 0
    assert ids["a1"] in table.output  # ids and times are never cut; at 80 columns titles fold
    page1 = invoke(cli, "sessions", "list", "--user", "alice", "--limit", "1")
    assert "next page: --before" in page1.output
    cursor = page1.output.split("--before '", 1)[1].split("'", 1)[0]
    page2 = json.loads(
        invoke(cli, "sessions", "list", "--user", "alice", "--limit", "1", "--before", cursor, "--json").output
    )
    assert [s["id"] for s in page2] == [ids["a2"]]
    listed = json.loads(invoke(cli, "sessions", "list", "--user", "alice", "--json").output)
    assert [s["message_count"] for s in listed] == [4, 1]
    assert listed[0]["metadata"] == {"title": "Refund"}

    shown = invoke(cli, "sessions", "show", ids["a1"])
    assert shown.exit_code == 0
    assert "-> call lookup({})" in shown.output
    assert "<- output of c1" in shown.output
    assert "more characters; --full shows all" in shown.output
    assert "Where is my refund?\\0" in shown.output
    full = invoke(cli, "sessions", "show", ids["a1"], "--full")
    assert "more characters" not in full.output
    as_json = json.loads(invoke(cli, "sessions", "show", ids["a1"], "--json").output)
    assert as_json["messages"][0]["content"] == "Where is my refund?\x00"
    assert as_json["messages"][3]["raw"] == {"type": "message", "x": [1, 2.5]}

    missing = invoke(cli, "sessions", "show", "no-such-session")
    assert missing.exit_code == 1
    assert missing.output.strip() == "error: no session no-such-session"
    assert invoke(cli, "sessions", "list", "--user", "alice", "--before", "garbage").exit_code == 2


def test_export_import_round_trip_is_identical_and_idempotent(
    cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str, tmp_path: Path
) -> None:
    seed(database_url, schema_name)
    exported = invoke(cli, "export", "--output", str(tmp_path / "all.jsonl"))
    assert exported.exit_code == 0
    text = (tmp_path / "all.jsonl").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 3 + 6 + 1  # sessions, messages, the end line
    target_schema = schema_name + "_copy"
    runner = CliRunner()
    env = {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": target_schema}
    try:
        first = runner.invoke(app, ["import", str(tmp_path / "all.jsonl")], env=env)
        assert first.exit_code == 0, first.output
        assert "imported 3 of 3 sessions and 6 of 6 messages" in first.output
        again = runner.invoke(app, ["import", str(tmp_path / "all.jsonl")], env=env)
        assert "imported 0 of 3 sessions and 0 of 6 messages" in again.output
        copy = runner.invoke(app, ["export"], env=env)
        assert copy.exit_code == 0
        assert copy.stdout == text
        # Appends continue after the imported seqs.
        (alice_session,) = [json.loads(line) for line in text.splitlines() if '"Refund"' in line]

        async def append() -> int:
            async with PostgresSessionStore(database_url, schema=target_schema) as store:
                return (await store.add_message(alice_session["id"], "user", "after import")).seq

        assert asyncio.run(append()) == 5
    finally:
        drop_schema(database_url, target_schema)


def test_export_one_user_or_one_session(
    cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str
) -> None:
    ids = seed(database_url, schema_name)
    bob = [json.loads(line) for line in invoke(cli, "export", "--user", "bob").stdout.splitlines()]
    assert [(x["type"], x.get("user_id")) for x in bob] == [("session", "bob"), ("message", None), ("end", None)]
    one = [json.loads(line) for line in invoke(cli, "export", "--session", ids["a1"]).stdout.splitlines()]
    assert [x["type"] for x in one] == ["session"] + ["message"] * 4 + ["end"]
    assert invoke(cli, "export", "--user", "bob", "--session", ids["a1"]).exit_code == 2


@pytest.mark.parametrize(
    ("line3", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "must be a JSON object"),
        (
            '{"type": "message", "session_id": "s1", "id": "m2", "seq": 2, "role": "wizard", "content": "x", '
            '"created_at": "2026-01-01T00:00:00+00:00"}',
            "role must be one of",
        ),
        (
            '{"type": "message", "session_id": "other", "id": "m2", "seq": 2, "role": "user", "content": "x", '
            '"created_at": "2026-01-01T00:00:00+00:00"}',
            "does not come first",
        ),
        (
            '{"type": "message", "session_id": "s1", "id": "m2", "seq": 2, "role": "user", "content": "x", '
            '"created_at": "yesterday"}',
            "not an ISO 8601 time",
        ),
        ('{"type": "banana"}', "unknown line type"),
        (
            '{"type": "message", "session_id": "s1", "id": "m2", "seq": 9223372036854775807, "role": "user", '
            '"content": "x", "created_at": "2026-01-01T00:00:00+00:00"}',
            "seq must be between 1 and 4611686018427387904",
        ),
        (
            '{"type": "message", "session_id": "s1", "id": "m2", "seq": 2, "role": "tool", "content": "x", '
            '"created_at": "2026-01-01T00:00:00+00:00"}',
            "a tool message needs the tool_call_id",
        ),
    ],
)
def test_malformed_import_lines_name_the_line_and_change_nothing(
    cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str, tmp_path: Path, line3: str, reason: str
) -> None:
    good = [
        '{"type": "session", "id": "s1", "user_id": "u", "agent_name": "a", "metadata": {}, '
        '"created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00", "last_seq": 1}',
        '{"type": "message", "session_id": "s1", "id": "m1", "seq": 1, "role": "user", "content": "hi", '
        '"created_at": "2026-01-01T00:00:00+00:00"}',
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([*good, line3]) + "\n", encoding="utf-8")
    result = invoke(cli, "import", str(path))
    assert result.exit_code == 1
    assert result.output.startswith("error: line 3: ")
    assert reason in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert count(database_url, schema_name, "agent_sessions") == 0


def test_import_refuses_an_export_cut_short_unless_allowed_partial(
    cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str, tmp_path: Path
) -> None:
    seed(database_url, schema_name)
    assert invoke(cli, "export", "-o", str(tmp_path / "all.jsonl")).exit_code == 0
    lines = (tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:4]), encoding="utf-8")  # ends on a whole line, as an interrupted export did
    target_schema = schema_name + "_copy"
    env = {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": target_schema}
    runner = CliRunner()
    try:
        refused = runner.invoke(app, ["import", str(cut)], env=env)
        assert refused.exit_code == 1
        (line,) = refused.output.strip().splitlines()
        assert line.startswith("error: line 5: no end line after line 4: the export was cut short")
        assert "--allow-partial" in line
        assert count(database_url, target_schema, "agent_sessions") == 0
        partial = runner.invoke(app, ["import", str(cut), "--allow-partial"], env=env)
        assert partial.exit_code == 0, partial.output
        sessions = sum(line.startswith('{"type": "session"') for line in lines[:4])
        assert f"imported {sessions} of {sessions} sessions" in partial.output
        assert f"warning: {cut} has no end line" in partial.output
        complete = runner.invoke(app, ["import", str(tmp_path / "all.jsonl")], env=env)
        assert complete.exit_code == 0, complete.output
        assert "warning" not in complete.output
        assert count(database_url, target_schema, "agent_sessions") == 3
    finally:
        drop_schema(database_url, target_schema)


def test_delete_user_erases_everything_of_one_user(
    cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str
) -> None:
    seed(database_url, schema_name)
    refused = invoke(cli, "delete-user", "alice")
    assert refused.exit_code == 2
    assert count(database_url, schema_name, "agent_sessions") == 3
    done = invoke(cli, "delete-user", "alice", "--yes")
    assert done.exit_code == 0
    assert done.output.strip() == "erased user alice: 2 sessions, 5 messages"
    assert json.loads(invoke(cli, "sessions", "list", "--user", "alice", "--json").output) == []
    assert count(database_url, schema_name, "agent_sessions") == 1
    assert count(database_url, schema_name, "conversation_messages") == 1


def test_stats(cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str) -> None:
    seed(database_url, schema_name)
    report = json.loads(invoke(cli, "stats", "--json").output)
    assert (report["sessions"], report["messages"], report["users"]) == (3, 6, 2)
    assert {a["agent_name"]: (a["sessions"], a["messages"]) for a in report["by_agent"]} == {
        "Support": (2, 5),
        "Sales": (1, 1),
    }
    assert {t["name"] for t in report["tables"]} >= {"agent_sessions", "conversation_messages"}
    assert all(t["index_bytes"] > 0 for t in report["tables"])
    text = invoke(cli, "stats").output
    assert "sessions 3  messages 6  users 2" in text


def test_library_errors_are_one_line_exit_1(cli: tuple[CliRunner, dict[str, str]]) -> None:
    runner, _ = cli
    result = runner.invoke(
        app, ["--schema", "bad-schema!", "stats"], env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}
    )
    assert result.exit_code == 1
    assert result.output.startswith("error: invalid schema name")
    assert "Traceback" not in result.output


def test_python_dash_m_and_exit_codes(database_url: str, schema_name: str) -> None:
    env = dict(os.environ, DATABASE_URL=database_url, CONVOSTORE_SCHEMA=schema_name)
    ok = subprocess.run([sys.executable, "-m", "convostore", "migrate"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    usage = subprocess.run([sys.executable, "-m", "convostore", "nope"], env=env, capture_output=True, text=True)
    assert usage.returncode == 2
    down = subprocess.run(
        [sys.executable, "-m", "convostore", "--database-url", "postgresql://x@127.0.0.1:1/x", "stats"],
        env=dict(env, CONVOSTORE_RETRY_ATTEMPTS="1"),
        capture_output=True,
        text=True,
    )
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot connect to postgresql://x@127.0.0.1:1/x")
    assert len(down.stderr.splitlines()) == 1
    assert "Traceback" not in down.stderr


def test_sessions_list_without_user_pages_through_the_tenants_sessions(
    cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str
) -> None:
    ids = seed(database_url, schema_name)
    listed = json.loads(invoke(cli, "sessions", "list", "--json").output)
    assert {s["id"] for s in listed} == set(ids.values())
    assert {s["user_id"] for s in listed} == {"alice", "bob"}
    page1 = invoke(cli, "sessions", "list", "--limit", "2")
    assert page1.exit_code == 0, page1.output
    assert "sessions of tenant default" in page1.output
    cursor = page1.output.split("--before '", 1)[1].split("'", 1)[0]
    page2 = json.loads(invoke(cli, "sessions", "list", "--limit", "2", "--before", cursor, "--json").output)
    first = json.loads(invoke(cli, "sessions", "list", "--limit", "2", "--json").output)
    assert [s["id"] for s in first + page2] == [s["id"] for s in listed]


_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


def test_tables_keep_timestamps_whole_at_80_columns(database_url: str, schema_name: str) -> None:
    async def go() -> None:
        async with PostgresSessionStore(database_url, schema=schema_name) as store:
            for n in range(3):
                long = f"a rather long agent name number {n} that cannot fit"
                await store.create_session(f"user-with-a-long-name-{n}@example.com", long, {"title": "t" * 70})

    asyncio.run(go())
    env = dict(os.environ, DATABASE_URL=database_url, CONVOSTORE_SCHEMA=schema_name, COLUMNS="80")
    subprocess.run([sys.executable, "-m", "convostore", "keys", "create"], env=env, capture_output=True, check=True)
    for args in (["sessions", "list"], ["keys", "list"], ["migrate", "--status"]):
        shown = subprocess.run([sys.executable, "-m", "convostore", *args], env=env, capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        assert max(len(line) for line in shown.stdout.splitlines()) <= 80, shown.stdout
        expected = {"sessions": 3, "keys": 1, "migrate": len(MIGRATIONS)}[args[0]]
        assert len(_TIMESTAMP.findall(shown.stdout)) == expected, shown.stdout


def test_keys_create_migrates_a_new_schema(cli: tuple[CliRunner, dict[str, str]]) -> None:
    created = invoke(cli, "keys", "create", "--name", "first")
    assert created.exit_code == 0, created.output
    assert "created key" in created.output
    assert "up to date" in invoke(cli, "migrate").output
    assert "first" in invoke(cli, "keys", "list").output


def test_the_database_in_use_is_said_once_with_the_password_hidden(cli: tuple[CliRunner, dict[str, str]]) -> None:
    runner, env = cli
    url = urlsplit(env["DATABASE_URL"])
    with_password = urlunsplit(url._replace(netloc=f"{url.username or 'postgres'}:hunter2@{url.netloc.split('@')[-1]}"))
    result = runner.invoke(app, ["--debug", "migrate", "--status"], env=dict(env, DATABASE_URL=with_password))
    said = [line for line in result.output.splitlines() if "using DATABASE_URL" in line]
    assert len(said) == 1, result.output
    assert "hunter2" not in said[0]
    assert ":***@" in said[0]


def test_serve_migrates_a_new_schema_and_says_which_database(database_url: str, schema_name: str) -> None:
    pytest.importorskip("uvicorn")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, DATABASE_URL=database_url, CONVOSTORE_SCHEMA=schema_name)
    command = [sys.executable, "-m", "convostore", "serve", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        seen = []
        # Read its log until it serves (or ends): no clock involved.
        for line in server.stderr:
            seen.append(line)
            if "Uvicorn running" in line or "serving convostore" in line:
                break
        log = "".join(seen)
        assert "serving convostore" in log, log
        assert log.splitlines()[0].startswith("using DATABASE_URL ("), log
        assert "applied 0001_sessions_and_messages" in log
    finally:
        server.terminate()
        server.wait()

    async def status() -> list[object]:
        async with PostgresSessionStore(database_url, schema=schema_name, apply_migrations=None) as store:
            return [m for m in await store.migration_status() if m.applied_at is None]

    assert asyncio.run(status()) == []


def test_the_demos_hint_runs_as_printed(database_url: str, schema_name: str, tmp_path: Path) -> None:
    pytest.importorskip("agents")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(DATABASE_URL=database_url, CONVOSTORE_SCHEMA=schema_name, COLUMNS="200")
    demo = subprocess.run(
        [sys.executable, "-m", "convostore.demo"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr.startswith("using DATABASE_URL ("), demo.stderr
    [hint] = [line.split("see it again: ", 1)[1] for line in demo.stdout.splitlines() if "see it again: " in line]
    shown = subprocess.run(shlex.split(hint), env=env, capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "My name is Alice" in shown.stdout


def test_roles_create_changes_an_existing_role_only_with_force(
    cli: tuple[CliRunner, dict[str, str]], database_url: str, schema_name: str
) -> None:
    import asyncpg

    suffix = os.urandom(4).hex()
    superuser, owner = f"cs_super_{suffix}", f"cs_owner_{suffix}"

    async def sql(statement: str) -> object:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    def is_superuser() -> object:
        return asyncio.run(sql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{superuser}'"))

    asyncio.run(sql(f'CREATE ROLE "{superuser}" SUPERUSER LOGIN'))
    try:
        assert invoke(cli, "migrate").exit_code == 0
        refused = invoke(cli, "roles", "create", "--owner", owner, "--runtime", superuser)
        assert refused.exit_code == 1, refused.output
        assert "SUPERUSER -> NOSUPERUSER" in refused.output
        assert "--force" in refused.output
        assert "Traceback" not in refused.output
        assert is_superuser() is True
        assert asyncio.run(sql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{owner}'")) == 0
        forced = invoke(cli, "roles", "create", "--owner", owner, "--runtime", superuser, "--force")
        assert forced.exit_code == 0, forced.output
        assert is_superuser() is False
    finally:
        drop_schema(database_url, schema_name)
        for role in (superuser, owner):
            asyncio.run(
                sql(
                    f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN "
                    f'DROP OWNED BY "{role}"; DROP ROLE "{role}"; END IF; END $$'
                )
            )
