"""Export and import of sessions as JSON Lines: lossless, streaming, idempotent.

The format, one JSON object per line:

* ``{"type": "session", "id", "user_id", "agent_name", "metadata", "created_at",
  "updated_at", "expires_at", "ttl_seconds", "last_seq"}``
* ``{"type": "message", "session_id", "id", "seq", "role", "content", "tool_calls",
  "tool_call_id", "raw", "created_at"}``, after the line of its session.

Times are ISO 8601 with offset and microseconds; strings are exported as stored (U+0000
included, JSON escapes it). Export reads sessions page by page and each session's messages
through a server-side cursor, so memory stays flat however large the export. Import runs in
one transaction: any bad line aborts it with its line number and nothing is written.
Rows already present (same session id; same session id and seq or message id) are skipped,
so importing a file twice changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import asyncpg

from . import _validate as check
from ._codec import decode_text, dump_json, encode_text, load_json
from ._types import Connection
from .errors import ConvostoreError, ImportFileError, InvalidInput
from .models import ROLES
from .store import PostgresSessionStore

_PAGE = 500
_BATCH = 1000


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :func:`import_jsonl` did."""

    sessions_read: int
    messages_read: int
    sessions_added: int
    messages_added: int


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def export_jsonl(
    store: PostgresSessionStore,
    *,
    user_id: str | None = None,
    session_id: str | None = None,
) -> AsyncIterator[str]:
    """Yield the export, one JSON line (without newline) at a time."""
    uid = check.optional_identifier(user_id, "user_id")
    sid = check.optional_identifier(session_id, "session_id")
    q = store._q
    after: str | None = None
    while True:
        page = await store._run("export", partial(_sessions_page, q.export_sessions_page, uid, sid, after))
        for s in page:
            yield json.dumps(
                {
                    "type": "session",
                    "id": s["id"],
                    "user_id": s["user_id"],
                    "agent_name": s["agent_name"],
                    "metadata": load_json(s["metadata"]),
                    "created_at": _iso(s["created_at"]),
                    "updated_at": _iso(s["updated_at"]),
                    "expires_at": _iso(s["expires_at"]),
                    "ttl_seconds": s["ttl_seconds"],
                    "last_seq": s["last_seq"],
                },
                ensure_ascii=False,
            )
            async for line in _export_messages(store, s["id"]):
                yield line
        if len(page) < _PAGE:
            return
        after = page[-1]["id"]


async def _sessions_page(
    sql: str, uid: str | None, sid: str | None, after: str | None, conn: Connection
) -> list[asyncpg.Record]:
    return await conn.fetch(sql, uid, sid, after, _PAGE)


async def _export_messages(store: PostgresSessionStore, session_id: str) -> AsyncIterator[str]:
    # A cursor needs a transaction; it is read-only and short per session. Not retried
    # mid-stream: a failure aborts the export (re-run it; import is idempotent).
    async with store.pool.acquire() as conn, conn.transaction(readonly=True):
        async for m in conn.cursor(store._q.export_messages, session_id, prefetch=1000):
            yield json.dumps(
                {
                    "type": "message",
                    "session_id": session_id,
                    "id": m["id"],
                    "seq": m["seq"],
                    "role": m["role"],
                    "content": decode_text(m["content"]),
                    "tool_calls": load_json(m["tool_calls"]),
                    "tool_call_id": m["tool_call_id"],
                    "raw": load_json(m["raw"]),
                    "created_at": _iso(m["created_at"]),
                },
                ensure_ascii=False,
            )


def _time(value: Any, line: int, field: str, optional: bool = False) -> datetime | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ImportFileError(line, f"{field} must be an ISO 8601 time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ImportFileError(line, f"{field} is not an ISO 8601 time: {value!r}") from exc
    if parsed.tzinfo is None:
        raise ImportFileError(line, f"{field} has no UTC offset: {value!r}")
    return parsed


def _int(value: Any, line: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImportFileError(line, f"{field} must be a non-negative integer")
    return value


def _session_row(obj: dict[str, Any], line: int) -> tuple[Any, ...]:
    try:
        ttl = obj.get("ttl_seconds")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0):
            raise ImportFileError(line, "ttl_seconds must be a positive number or null")
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ImportFileError(line, "metadata must be an object")
        return (
            check.identifier(obj.get("id"), "id"),
            check.identifier(obj.get("user_id"), "user_id"),
            check.identifier(obj.get("agent_name"), "agent_name"),
            check.metadata(metadata),
            _time(obj.get("created_at"), line, "created_at"),
            _time(obj.get("updated_at"), line, "updated_at"),
            _time(obj.get("expires_at"), line, "expires_at", optional=True),
            None if ttl is None else float(ttl),
            _int(obj.get("last_seq", 0), line, "last_seq"),
        )
    except ImportFileError:
        raise
    except ConvostoreError as exc:
        raise ImportFileError(line, str(exc)) from exc


def _message_row(obj: dict[str, Any], line: int) -> tuple[Any, ...]:
    try:
        role = obj.get("role")
        if role not in ROLES:
            raise ImportFileError(line, f"role must be one of {sorted(ROLES)}, got {role!r}")
        content = obj.get("content")
        if not isinstance(content, str):
            raise ImportFileError(line, "content must be a string")
        tool_calls = obj.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise ImportFileError(line, "tool_calls must be a list or null")
        raw = obj.get("raw")
        return (
            check.identifier(obj.get("session_id"), "session_id"),
            _int(obj.get("seq"), line, "seq"),
            check.identifier(obj.get("id"), "id"),
            role,
            encode_text(content),
            None if tool_calls is None else dump_json(tool_calls, "tool_calls"),
            check.optional_identifier(obj.get("tool_call_id"), "tool_call_id"),
            None if raw is None else dump_json(raw, "raw"),
            _time(obj.get("created_at"), line, "created_at"),
        )
    except ImportFileError:
        raise
    except ConvostoreError as exc:
        raise ImportFileError(line, str(exc)) from exc


async def import_jsonl(
    store: PostgresSessionStore,
    lines: Iterable[str],
    *,
    on_line: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import an export (see the module docstring) in one transaction.

    Raises :class:`ImportFileError` (an :class:`InvalidInput`) naming the first bad line;
    then nothing is written. *on_line* is called with each line number (progress).
    """
    q = store._q
    declared: set[str] = set()
    sessions: list[tuple[Any, ...]] = []
    messages: list[tuple[Any, ...]] = []
    counts = {"sessions_read": 0, "messages_read": 0, "sessions_added": 0, "messages_added": 0}

    async def flush(conn: Connection) -> None:
        if sessions:
            status = await conn.execute(q.import_sessions, *[list(c) for c in zip(*sessions, strict=True)])
            counts["sessions_added"] += int(status.split()[-1])
            sessions.clear()
        if messages:
            status = await conn.execute(q.import_messages, *[list(c) for c in zip(*messages, strict=True)])
            counts["messages_added"] += int(status.split()[-1])
            await conn.execute(q.raise_last_seq, list({m[0] for m in messages}))
            messages.clear()

    try:
        async with store.pool.acquire() as conn, conn.transaction():
            number = 0
            for number, text in enumerate(lines, start=1):
                if on_line is not None:
                    on_line(number)
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ImportFileError(number, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
                if not isinstance(obj, dict):
                    raise ImportFileError(number, "each line must be a JSON object")
                kind = obj.get("type")
                if kind == "session":
                    row = _session_row(obj, number)
                    declared.add(row[0])
                    sessions.append(row)
                    counts["sessions_read"] += 1
                elif kind == "message":
                    row = _message_row(obj, number)
                    if row[0] not in declared:
                        raise ImportFileError(number, f"message for session {row[0]!r}, whose line does not come first")
                    messages.append(row)
                    counts["messages_read"] += 1
                else:
                    raise ImportFileError(number, f"unknown line type {kind!r} (expected 'session' or 'message')")
                if len(sessions) + len(messages) >= _BATCH:
                    await flush(conn)
            await flush(conn)
    except ConvostoreError:
        raise
    except asyncpg.PostgresError as exc:
        raise InvalidInput(f"import failed, nothing was written: {exc}") from exc
    return ImportReport(**counts)
