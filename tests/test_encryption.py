"""Encryption at rest: sealed in the tables, exact through the API, rotated under writers."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from convostore import (
    DuplicateMessageId,
    KeyUnavailable,
    NewMessage,
    PostgresSessionStore,
    export_jsonl,
    import_jsonl,
)
from convostore.cli import app

OLD = base64.b64encode(b"o" * 32).decode()
NEW = base64.b64encode(b"n" * 32).decode()
SECRET = "my card is 4111 1111 1111 1111 \x00 ☀"


async def _raw_rows(url: str, schema: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(
            await conn.fetch(
                "SELECT session_id, seq, id, content, tool_calls::text, raw::text, key_id, sealed "
                f'FROM "{schema}".conversation_messages ORDER BY session_id, seq'
            )
        )
    finally:
        await conn.close()


async def test_sealed_at_rest_exact_through_the_api(database_url: str, schema_name: str) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[OLD]) as store:
        s = await store.create_session("alice", "agent", {"title": "plaintext metadata"})
        call = {"id": "c1", "type": "function", "function": {"name": "charge", "arguments": SECRET}}
        stored = await store.add_messages(
            s.id,
            [
                NewMessage("user", SECRET, raw={"role": "user", "content": SECRET}),
                NewMessage("assistant", "", tool_calls=[call]),
                NewMessage("tool", SECRET, tool_call_id="c1"),
            ],
        )
        assert [m.content for m in await store.get_messages(s.id)] == [SECRET, "", SECRET]
        session = await store.get_session(s.id)
        assert session is not None
        assert session.messages == tuple(stored)
        assert session.messages[1].tool_calls == [call]
        assert (await store.pop_message(s.id)) == stored[2]
    rows = await _raw_rows(database_url, schema_name)
    assert len(rows) == 2
    for row in rows:
        text = json.dumps([str(v) for v in row])
        assert "card is 4111" not in text  # nothing of the message in any column (a needle random bytes cannot hold)
        assert "charge" not in text
        assert row["tool_calls"] is None
        assert row["raw"] is None
        assert row["key_id"] == rows[0]["key_id"]
        assert row["key_id"].startswith("k")
        assert isinstance(row["sealed"], bytes)
        assert len(row["sealed"]) > 28


async def test_without_the_key_nothing_opens_and_rows_cannot_be_moved(database_url: str, schema_name: str) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[OLD]) as store:
        a = await store.create_session("u", "a")
        b = await store.create_session("u", "a")
        await store.add_message(a.id, "user", "for a only", message_id="m1")
        await store.add_message(b.id, "user", "for b", message_id="m1")
        table = f'"{schema_name}".conversation_messages'
        sealed = await store.pool.fetchval(f"SELECT sealed FROM {table} WHERE session_id = $1", a.id)
        await store.pool.execute(f"UPDATE {table} SET sealed = $1 WHERE session_id = $2", sealed, b.id)
        with pytest.raises(KeyUnavailable):  # a's sealed text copied into b's row does not open there
            await store.get_messages(b.id)
    async with PostgresSessionStore(database_url, schema=schema_name) as keyless:
        with pytest.raises(KeyUnavailable):
            await keyless.get_messages(a.id)
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[NEW]) as wrong:
        with pytest.raises(KeyUnavailable):
            await wrong.get_messages(a.id)


async def test_a_retried_sealed_append_is_recognised(database_url: str, schema_name: str) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[OLD]) as store:
        s = await store.create_session("u", "a")
        first = await store.add_messages(s.id, [NewMessage("user", "once", id="r1"), NewMessage("user", "x", id="r2")])
        again = await store.add_messages(s.id, [NewMessage("user", "once", id="r1"), NewMessage("user", "x", id="r2")])
        assert again == first
        with pytest.raises(DuplicateMessageId):
            await store.add_messages(s.id, [NewMessage("user", "other", id="r1")])
        assert len(await store.get_messages(s.id)) == 2


async def test_rotation_under_32_writers_loses_and_double_seals_nothing(database_url: str, schema_name: str) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[OLD]) as old:
        sessions = [(await old.create_session(f"u{i}", "a")).id for i in range(32)]
        for sid in sessions:
            await old.add_messages(sid, [NewMessage("user", f"{sid} before {i}") for i in range(20)])
    # Rotation: writers run with the new key first (the old one still opens), then rekey.
    rotated = PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[NEW, OLD], max_size=20)
    acked: dict[str, list[str]] = {sid: [f"{sid} before {i}" for i in range(20)] for sid in sessions}
    stop = asyncio.Event()

    async def write(sid: str) -> None:
        i = 0
        while not stop.is_set():
            text = f"{sid} during {i}"
            await rotated.add_message(sid, "user", text)
            acked[sid].append(text)
            i += 1

    writers = [asyncio.create_task(write(sid)) for sid in sessions]
    await asyncio.sleep(0.2)
    resealed = await rotated.rekey(batch_size=50)
    stop.set()
    await asyncio.gather(*writers)
    assert resealed == 32 * 20
    assert await rotated.rekey() == 0  # nothing left
    for sid in sessions:
        assert [m.content for m in await rotated.get_messages(sid)] == acked[sid]
    await rotated.close()
    rows = await _raw_rows(database_url, schema_name)
    assert {r["key_id"] for r in rows} == {"k" + __import__("hashlib").sha256(b"n" * 32).hexdigest()[:12]}
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[NEW]) as new_only:
        assert len(await new_only.get_messages(sessions[0])) == len(acked[sessions[0]])


async def test_plaintext_rows_sealed_on_request_and_export_import_round_trip(
    database_url: str, schema_name: str
) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name) as plain:
        s = await plain.create_session("u", "a", session_id="s1")
        await plain.add_messages(s.id, [NewMessage("user", SECRET), NewMessage("assistant", "sure")])
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[NEW]) as store:
        assert await store.rekey() == 0  # sealed rows only, unless asked
        assert await store.rekey(include_plaintext=True) == 2
        assert [m.content for m in await store.get_messages("s1")] == [SECRET, "sure"]
        lines = [line async for line in export_jsonl(store)]
        assert SECRET in json.loads(lines[1])["content"]
        other = store.scoped(tenant="copy")
        report = await import_jsonl(
            other, [line.replace('"tenant_id": "default"', '"tenant_id": "copy"') for line in lines]
        )
        assert report.messages_added == 2
        assert [m.content for m in await other.get_messages("s1")] == [SECRET, "sure"]
    rows = await _raw_rows(database_url, schema_name)
    assert all(r["sealed"] is not None for r in rows)
    assert "card is 4111" not in json.dumps([str(v) for r in rows for v in r])


def test_the_cli_rotates_keys(database_url: str, schema_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def seed() -> str:
        async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[OLD]) as store:
            s = await store.create_session("u", "a")
            await store.add_message(s.id, "user", "hello")
            return s.id

    sid = asyncio.run(seed())
    env = {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name, "CONVOSTORE_ENCRYPTION_KEYS": f"{NEW},{OLD}"}
    result = CliRunner().invoke(app, ["rekey"], env=env)
    assert result.exit_code == 0, result.output
    assert "re-sealed 1 messages" in result.output
    shown = CliRunner().invoke(app, ["sessions", "show", sid], env=env)
    assert "hello" in shown.output
    keygen = CliRunner().invoke(app, ["keygen"])
    assert len(base64.b64decode(keygen.output.strip())) == 32
    missing = CliRunner().invoke(app, ["rekey"], env={**env, "CONVOSTORE_ENCRYPTION_KEYS": ""})
    assert missing.exit_code == 1
