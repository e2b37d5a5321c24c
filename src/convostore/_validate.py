"""Checks run on every argument before anything is sent to the database."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ._codec import check_utf8, dump_json, encode_text
from .errors import InvalidIdentifier, InvalidInput, InvalidMessage, InvalidMetadata
from .models import ROLES, NewMessage

MAX_ID_LENGTH = 255


def identifier(value: object, what: str) -> str:
    """A session/user/agent/message id: a non-empty str of at most 255 characters.

    UUIDs are accepted and stored in their canonical text form.
    """
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidIdentifier(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifier(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if "\x00" in value:
        raise InvalidIdentifier(f"{what} must not contain U+0000")
    check_utf8(value, what, InvalidIdentifier)
    return value


def optional_identifier(value: object, what: str) -> str | None:
    return None if value is None else identifier(value, what)


def metadata(value: object) -> str:
    """Session metadata: a JSON object. Returns its stored JSON text."""
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise InvalidMetadata(f"metadata must be a mapping, not {type(value).__name__}")
    return dump_json(dict(value), "metadata", InvalidMetadata)


def limit(value: object, what: str = "limit") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise InvalidInput(f"{what} must be >= 0, got {value}")
    return value


def duration(value: object, what: str) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta):
        raise InvalidInput(f"{what} must be a timedelta or seconds, not {type(value).__name__}")
    if value <= timedelta(0):
        raise InvalidInput(f"{what} must be positive, got {value}")
    return value


_FIELDS = frozenset({"role", "content", "tool_calls", "tool_call_id", "id", "raw"})

# The columns of one message as sent in the append statement's arrays.
Row = tuple[str, str, str, str | None, str | None, str | None]


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
        raise InvalidMessage(f"{where} must be a NewMessage or a mapping, not {type(message).__name__}")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidMessage(f"{where}: role must be one of {sorted(ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise InvalidMessage(f"{where}: content must be a str, not {type(content).__name__}")
    check_utf8(content, f"{where} content", InvalidMessage)
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise InvalidMessage(f"{where}: tool_calls must be a list or None, not {type(tool_calls).__name__}")
    return (
        identifier(message_id, f"{where} id") if message_id is not None else secrets.token_hex(16),
        role,
        encode_text(content),
        None if tool_calls is None else dump_json(tool_calls, f"{where} tool_calls", InvalidMessage),
        optional_identifier(tool_call_id, f"{where} tool_call_id"),
        None if raw is None else dump_json(raw, f"{where} raw", InvalidMessage),
    )
