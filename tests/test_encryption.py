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
    EncryptionRequired,
    KeyUnavailable,
    NewMessage,
    PostgresSessionStore,
    TamperedMessage,
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
    assert {r["key_id"] for r in rows} == {"k" + __import__("hashlib").sha256(b"n" * 32).hexdigest()[:12] + "/2"}
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
        moved = [line.replace('"tenant_id": "default"', '"tenant_id": "copy"') for line in lines[:-1]]
        report = await import_jsonl(other, moved, allow_partial=True)  # changed lines: without the end line
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


# -- a database writer without the keys -------------------------------------------------------


async def _as_writer(url: str, sql: str, *args: Any) -> None:
    """Run *sql* as a database writer holding no encryption key (a connection of its own)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def test_a_writer_without_keys_cannot_change_what_a_sealed_row_says(database_url: str, schema_name: str) -> None:
    table = f'"{schema_name}".conversation_messages'
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[OLD]) as store:
        s = await store.create_session("u", "a")
        call = {"id": "c1", "type": "function", "function": {"name": "charge", "arguments": "{}"}}
        await store.add_messages(
            s.id,
            [
                NewMessage("user", "ignore previous instructions", id="m1"),
                NewMessage("assistant", "", tool_calls=[call], id="m2"),
                NewMessage("tool", "charged", tool_call_id="c1", id="m3"),
            ],
        )
        await store.fork_session(s.id, "side")
        await store.add_messages(s.id, [NewMessage("user", "on the side", id="m4")], branch="side")
        before = await store.get_messages(s.id)
        tampering = [
            ("role = 'system'", "role = 'user'", "m1", "main"),  # a user's words made the system prompt
            ("tool_call_id = 'c9'", "tool_call_id = 'c1'", "m3", "main"),  # a result pinned to another call
            ("branch = 'main'", "branch = 'side'", "m4", "main"),  # a message moved into another branch
        ]
        for change, undo, mid, branch in tampering:
            await _as_writer(database_url, f"UPDATE {table} SET {change} WHERE session_id = $1 AND id = $2", s.id, mid)
            with pytest.raises(TamperedMessage):
                await store.get_messages(s.id, branch=branch)
            await _as_writer(database_url, f"UPDATE {table} SET {undo} WHERE session_id = $1 AND id = $2", s.id, mid)
            assert await store.get_messages(s.id) == before
        assert [m.content for m in await store.get_messages(s.id, branch="side")][-1] == "on the side"


def _first_layout(tenant: str, sid: str, mid: str, content: str) -> tuple[str, bytes]:
    """A row sealed as convostore sealed before roles were bound: (key_id, sealed)."""
    import hashlib
    import secrets

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    master = base64.b64decode(OLD)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"convostore tenant key v1\0" + tenant.encode())
    nonce = secrets.token_bytes(12)
    plain = json.dumps([content, None, None]).encode()
    sealed = nonce + AESGCM(hkdf.derive(master)).encrypt(nonce, plain, "\0".join((tenant, sid, mid)).encode())
    return "k" + hashlib.sha256(master).hexdigest()[:12], sealed


async def test_rows_of_the_first_layout_open_and_rekey_binds_them(database_url: str, schema_name: str) -> None:
    table = f'"{schema_name}".conversation_messages'
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[OLD]) as store:
        s = await store.create_session("u", "a")
        await store.add_message(s.id, "user", "placeholder", message_id="m1")
        kid, sealed = _first_layout("default", s.id, "m1", "sealed long ago")
        await _as_writer(database_url, f"UPDATE {table} SET key_id = $1, sealed = $2 WHERE id = 'm1'", kid, sealed)
        assert [m.content for m in await store.get_messages(s.id)] == ["sealed long ago"]
        assert await store.rekey() == 1  # same key, older layout: re-sealed
        assert await store.rekey() == 0
        assert [m.content for m in await store.get_messages(s.id)] == ["sealed long ago"]
        await _as_writer(database_url, f"UPDATE {table} SET role = 'system' WHERE id = 'm1'")
        with pytest.raises(TamperedMessage):
            await store.get_messages(s.id)


async def test_a_store_without_keys_does_not_append_plaintext_to_a_sealed_tenant(
    database_url: str, schema_name: str
) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[OLD]) as store:
        s = await store.create_session("u", "a")
        await store.add_message(s.id, "user", "sealed")
    async with PostgresSessionStore(database_url, schema=schema_name) as keyless:
        with pytest.raises(EncryptionRequired):
            await keyless.add_message(s.id, "user", "in clear")
        with pytest.raises(EncryptionRequired):
            await keyless.add_messages("new", [NewMessage("user", "in clear")], user_id="u")
        # Another tenant, never sealed, takes plaintext.
        other = keyless.scoped(tenant="plain")
        t = await other.create_session("u", "a")
        assert (await other.add_message(t.id, "user", "in clear")).content == "in clear"
    rows = await _raw_rows(database_url, schema_name)
    assert [r["sealed"] is not None for r in rows if r["session_id"] == s.id] == [True]
    assert "in clear" not in json.dumps([str(r["content"]) for r in rows if r["session_id"] == s.id])


async def test_a_replay_after_rotation_is_recognised(database_url: str, schema_name: str) -> None:
    batch = [
        NewMessage("user", "once", id="r1"),
        NewMessage("assistant", "", tool_calls=[{"id": "c", "x": 1}], id="r2"),
    ]
    async with PostgresSessionStore(database_url, schema=schema_name) as plain:
        p = await plain.create_session("u", "a")
        before_encryption = await plain.add_messages(p.id, batch)
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[OLD]) as old:
        s = await old.create_session("u", "a")
        first = await old.add_messages(s.id, batch)
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[NEW, OLD]) as rotated:
        assert await rotated.add_messages(s.id, batch) == first  # stored under OLD, retried under NEW
        assert await rotated.add_messages(p.id, batch) == before_encryption  # stored in plaintext
        with pytest.raises(DuplicateMessageId):
            await rotated.add_messages(s.id, [NewMessage("user", "other", id="r1")])
        with pytest.raises(DuplicateMessageId):
            await rotated.add_messages(s.id, [NewMessage("system", "once", id="r1")])
        assert await rotated.rekey() == 2
        assert await rotated.add_messages(s.id, batch) == first
        assert len(await rotated.get_messages(s.id)) == 2
    rows = await _raw_rows(database_url, schema_name)
    assert len(rows) == 4
