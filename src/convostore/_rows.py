"""Mapping rows to Messages and Sessions: the hot path of every read, kept lean."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from ._codec import MARKER, decode_text, load_json
from .models import Message, Session, new_message, new_session

Record = asyncpg.Record


Opener = Callable[[str, str, str, bytes, str, str | None, str], tuple[str, str | None, str | None]]
"""Opens a sealed row: ``(session_id, message_id, key_id, sealed, role, tool_call_id,
branch)`` to its stored ``(content, tool_calls, raw)``; the role, tool-call id and branch
are the row's clear columns, which the seal binds (see :mod:`convostore._crypto`)."""


def no_key(
    session_id: str, message_id: str, key_id: str, sealed: bytes, role: str, tool_call_id: str | None, branch: str
) -> tuple[str, str | None, str | None]:
    from .errors import KeyUnavailable

    raise KeyUnavailable(
        f"message {message_id!r} of session {session_id!r} is sealed (key {key_id!r}) and no encryption key is set"
    )


def messages_from_rows(rows: Sequence[Any], sid: str, opener: Opener | None = None) -> list[Message]:
    """Rows of the ``_MESSAGE_COLUMNS`` shape as Messages (the hot path of every read);
    sealed rows are opened with *opener*."""
    messages = []
    for id_, seq, role, content, tool_calls, tool_call_id, raw, created_at, key_id, sealed, branch, first, last in rows:
        if sealed is not None:
            content, tool_calls, raw = (opener or no_key)(sid, id_, key_id, sealed, role, tool_call_id, branch)
        messages.append(
            new_message(
                id_,
                sid,
                seq,
                role,
                decode_text(content) if content[:1] == MARKER else content,
                None if tool_calls is None else load_json(tool_calls),
                tool_call_id,
                None if raw is None else load_json(raw),
                created_at,
                branch,
                None if first is None else (first, last),
            )
        )
    return messages


def session_from_row(row: Record, messages: tuple[Message, ...] = (), count: int | None = None) -> Session:
    """A Session from the ``_SESSION_COLUMNS`` of a row: its expiry is the fixed one, or for a
    sliding expiry (``ttl``) the time *ttl* after its last activity."""
    expires_at, ttl = row["expires_at"], row["ttl"]
    if expires_at is None and ttl is not None:
        expires_at = row["updated_at"] + ttl
    return new_session(
        row["id"],
        row["user_id"],
        row["agent_name"],
        load_json(row["metadata"]),
        row["created_at"],
        row["updated_at"],
        len(messages) if count is None else count,
        expires_at,
        messages,
    )


def sessions_from_joined_rows(rows: Sequence[Record], opener: Opener | None = None) -> list[Session]:
    """Fold session-joined-to-messages rows (ordered by session, then seq) into Sessions.

    Each row is the session's columns (``id`` ... ``ttl``, 8 of them) followed by
    one message in the ``_MESSAGE_COLUMNS`` shape, all NULL for a session without messages.
    """
    sessions: list[Session] = []
    current: Record | None = None
    tail: list[Sequence[Any]] = []
    for row in rows:
        if current is None or row[0] != current[0]:
            if current is not None:
                sessions.append(session_from_row(current, tuple(messages_from_rows(tail, current[0], opener))))
            current, tail = row, []
        if row["m_id"] is not None:
            tail.append(row[8:])
    if current is not None:
        sessions.append(session_from_row(current, tuple(messages_from_rows(tail, current[0], opener))))
    return sessions
