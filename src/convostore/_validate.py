"""Checks run on every argument before anything is sent to the database."""

from __future__ import annotations

import math
import re
import secrets
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from ._codec import check_utf8, dump_json, encode_text
from .errors import (
    InvalidIdentifier,
    InvalidIdentifierType,
    InvalidInput,
    InvalidMessage,
    InvalidMessageType,
    InvalidMetadata,
    InvalidMetadataType,
)
from .models import ROLES, NewMessage, Session, SessionCursor
from .windows import estimate_tokens

MAX_ID_LENGTH = 255
# The longest duration accepted (a TTL, an expiry, a retention age). Longer ones would put
# times past what Python's datetime can read back (year 9999): refused before any write.
MAX_DURATION = timedelta(days=36_525)
# C0 and C1 control characters and DEL: never part of an id (they would also reach terminals).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def identifier(value: object, what: str) -> str:
    """A session/user/agent/message id: a non-empty str of at most 255 characters.

    UUIDs are accepted and stored in their canonical text form.
    """
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidIdentifierType(f"{what} must be a string")
    if not value.strip():
        raise InvalidIdentifier(f"{what} must not be empty or blank")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifier(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if control := _CONTROL.search(value):
        raise InvalidIdentifier(f"{what} must not contain control characters (found {control.group()!r})")
    check_utf8(value, what, InvalidIdentifier)
    return value


# No URL can carry "." or ".." as a path segment: clients and browsers remove them (RFC 3986,
# and "%2E" too for browsers), so "/sessions/./messages" reaches the session "messages". A
# session is therefore never created with one of them as its id.
_DOT_SEGMENTS = frozenset({".", ".."})


def new_session_id(value: object, what: str = "session_id") -> str:
    """The id of a session about to be created: an identifier other than ``.`` and ``..``."""
    sid = identifier(value, what)
    if sid in _DOT_SEGMENTS:
        raise InvalidIdentifier(f"{what} must not be {sid!r} (no URL can name it: it reads as a path step)")
    return sid


def optional_identifier(value: object, what: str) -> str | None:
    return None if value is None else identifier(value, what)


def scope_name(value: object, what: str) -> str:
    """A tenant or user id: an identifier other than ``*``, which row-level security reads as
    "every user" (a user named ``*`` would see everyone's sessions)."""
    name = identifier(value, what)
    if name == "*":
        raise InvalidIdentifier(f"{what} must not be '*' (it means every user to row-level security)")
    return name


def metadata(value: object) -> str:
    """Session metadata: a JSON object. Returns its stored JSON text."""
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise InvalidMetadataType(f"metadata must be a mapping, not {type(value).__name__}")
    return dump_json(dict(value), "metadata", InvalidMetadata, InvalidMetadataType)


def limit(value: object, what: str = "limit") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise InvalidInput(f"{what} must be >= 0, got {value}")
    return value


def batch_size(value: object) -> int:
    """The size of a batch of a job that works in batches: a positive int."""
    n = limit(value, "batch_size")
    if not n:
        raise InvalidInput("batch_size must be a positive int")
    return n


def duration(value: object, what: str) -> timedelta | None:
    """A positive duration of at most :data:`MAX_DURATION` (a timedelta, or seconds)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidInput(f"{what} must be a finite number of seconds, got {value!r}")
        if abs(value) > MAX_DURATION.total_seconds():
            raise InvalidInput(f"{what} is {value!r} seconds; the limit is {MAX_DURATION.days} days")
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta):
        raise InvalidInput(f"{what} must be a timedelta or seconds, not {type(value).__name__}")
    if value <= timedelta(0):
        raise InvalidInput(f"{what} must be positive, got {value}")
    if value > MAX_DURATION:
        raise InvalidInput(f"{what} is {value.days} days; the limit is {MAX_DURATION.days} days")
    return value


_MESSAGE_ERRORS = (InvalidMessage, InvalidMessageType)
_FIELDS = frozenset({"role", "content", "tool_calls", "tool_call_id", "id", "raw"})


class Row(NamedTuple):
    """The columns of one validated message, as sent in the append statement's arrays."""

    id: str
    role: str
    content: str
    tool_calls: str | None
    tool_call_id: str | None
    raw: str | None
    key_id: str | None
    """Set, with *sealed*, when the content is sealed (see :mod:`convostore._crypto`)."""
    sealed: bytes | None
    tokens: int
    """Its token count."""
    kind: str | None
    """Its raw item's type: ``'reasoning'``, ``'function_call'``, ..."""


# Builds a Row from a tuple of its columns without the Python-level __new__ a NamedTuple
# calls: the append path builds one per message.
_new_row = tuple.__new__


def message_row(message: NewMessage | Mapping[str, Any], index: int = 0) -> Row:
    """Validate one message and return its column values (id generated when absent)."""
    where = f"message {index}"
    if isinstance(message, NewMessage):
        role, content, tool_calls = message.role, message.content, message.tool_calls
        tool_call_id, message_id, raw = message.tool_call_id, message.id, message.raw
    elif isinstance(message, (dict, Mapping)):  # dict first: the ABC check is slow
        if not _FIELDS.issuperset(message):
            unknown = set(message) - _FIELDS
            raise InvalidMessage(f"{where} has unknown fields: {sorted(unknown)}")
        if "role" not in message or "content" not in message:
            raise InvalidMessage(f"{where} needs 'role' and 'content'")
        role, content = message["role"], message["content"]
        tool_calls, tool_call_id = message.get("tool_calls"), message.get("tool_call_id")
        message_id, raw = message.get("id"), message.get("raw")
    else:
        raise InvalidMessageType(f"{where} must be a NewMessage or a mapping, not {type(message).__name__}")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidMessage(f"{where}: role must be one of {sorted(ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise InvalidMessageType(f"{where}: content must be a str, not {type(content).__name__}")
    check_utf8(content, f"{where} content", InvalidMessage)
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            raise InvalidMessageType(f"{where}: tool_calls must be a list or None, not {type(tool_calls).__name__}")
        for n, call in enumerate(tool_calls):
            if not isinstance(call, Mapping):
                raise InvalidMessageType(f"{where}: tool_calls[{n}] must be an object, not {type(call).__name__}")
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id.strip():
                raise InvalidMessage(f"{where}: tool_calls[{n}] needs a non-empty string 'id'")
    answered = optional_identifier(tool_call_id, f"{where} tool_call_id")
    if role == "item" and raw is None:
        raise InvalidMessage(f"{where}: an item (a framework's item that is no message) is kept in raw: give raw")
    if role == "tool" and answered is None:
        raise InvalidMessage(f"{where}: a tool message needs the tool_call_id of the call it answers")
    if role != "tool" and tool_call_id is not None:
        raise InvalidMessage(f"{where}: only a tool message has a tool_call_id (role is {role!r})")
    calls_text = None if tool_calls is None else dump_json(tool_calls, f"{where} tool_calls", *_MESSAGE_ERRORS)
    raw_text = None if raw is None else dump_json(raw, f"{where} raw", *_MESSAGE_ERRORS)
    return _new_row(
        Row,
        (
            identifier(message_id, f"{where} id") if message_id is not None else secrets.token_hex(16),
            role,
            encode_text(content),
            calls_text,
            answered,
            raw_text,
            None,
            None,
            estimate_tokens(token_text(content, calls_text, raw_text)),  # a store with a counter counts again
            kind_of(raw),
        ),
    )


def check_text(value: str, what: str) -> None:
    """Refuse text PostgreSQL cannot hold (lone surrogates)."""
    check_utf8(value, what, InvalidInput)


def token_text(content: str, tool_calls: str | None, raw: str | None) -> str:
    """The text whose tokens a message counts: its raw item, else its content and tool calls."""
    return raw if raw is not None else content + (tool_calls or "")


def kind_of(raw: Any) -> str | None:
    """The type of a framework's raw item (``None`` if it has none)."""
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    return kind[:64] if isinstance(kind, str) else None


def cursor(value: object) -> SessionCursor | None:
    """A listing position: a :class:`Session` (its cursor), a :class:`SessionCursor`, or None."""
    if value is None:
        return None
    if isinstance(value, Session):
        return value.cursor
    if isinstance(value, SessionCursor):
        if not isinstance(value.updated_at, datetime) or value.updated_at.tzinfo is None:
            raise InvalidInput("before: the cursor's updated_at must be a timezone-aware datetime")
        identifier(value.id, "before: the cursor's id")
        return value
    raise InvalidInput(f"before must be a Session or a SessionCursor, not {type(value).__name__}")
