"""Cursors for keyset paging of sessions, and the times given in query strings."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime

from ..models import SessionCursor
from .problems import ApiProblem

CURSOR_PATTERN = r"^[A-Za-z0-9_-]{8,1400}$"
"""What a cursor looks like (base64url without padding)."""


def encode_cursor(cursor: SessionCursor) -> str:
    """An opaque token for the listing position *cursor* (its ``updated_at`` and ``id``)."""
    data = json.dumps([cursor.updated_at.isoformat(), cursor.id], ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def _bad_cursor(why: str) -> ApiProblem:
    return ApiProblem(400, "bad-cursor", "Bad cursor", f"before is not a cursor this API gave out: {why}")


def decode_cursor(token: str) -> SessionCursor:
    """The listing position a token from :func:`encode_cursor` stands for; a problem (400
    ``bad-cursor``) for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw.decode())
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError: "[[[[..." nested
    # past what the decoder can go.
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise _bad_cursor("not base64url-encoded JSON") from exc
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise _bad_cursor("not a position")
    try:
        updated_at = datetime.fromisoformat(value[0])
    except ValueError as exc:
        raise _bad_cursor("no time in it") from exc
    if updated_at.tzinfo is None or not value[1]:
        raise _bad_cursor("not a position")
    return SessionCursor(updated_at, value[1])


# RFC 3339 allows a leap second (":60"), which Python's datetime cannot hold.
_LEAP = re.compile(r"(T\d\d:\d\d):60(?:\.\d+)?")


def parse_time(text: str, name: str) -> datetime:
    """An RFC 3339 time with its offset, as an aware UTC datetime (a problem otherwise).

    Times past the ends of what can be represented in UTC are clamped to them: as a bound
    of a filter they select the same rows. A leap second counts as the second before it.
    """
    try:
        value = datetime.fromisoformat(_LEAP.sub(r"\1:59.999999", text.strip().upper()))
    except ValueError as exc:
        raise ApiProblem(400, "invalid-input", "Invalid input", f"{name} is not an RFC 3339 time") from exc
    if value.tzinfo is None:
        raise ApiProblem(400, "invalid-input", "Invalid input", f"{name} needs a UTC offset (Z or +hh:mm)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if value.year > 1 else datetime.min.replace(tzinfo=UTC)
