"""Compaction: a summary replaces a branch's messages in its view, which stay stored."""

from __future__ import annotations

from collections.abc import Sequence

from . import _validate as check
from ._appends import Outcome
from ._messages import Messages, get_messages, rows_to_write
from ._scope import Scope
from ._sql import MARKER_KIND
from .errors import SessionNotFound, SessionOwnershipError
from .models import Message, NewMessage

# What stands for messages a compaction replaced with nothing (it hides itself too).
EMPTY_SUMMARY = NewMessage("item", "", raw={"type": MARKER_KIND})


async def compact(
    s: Scope,
    session_id: str,
    summary: Messages,
    from_seq: int | None,
    expect: Sequence[int] | None,
    prune_to: int | None,
    branch: str,
    user_id: str | None,
) -> list[Message] | None:
    """The store's ``compact`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    line = check.identifier(branch, "branch")
    uid = s.acting_user(user_id)
    start = check.limit(from_seq, "from_seq")
    prune = check.limit(prune_to, "prune_to")
    expected = None if expect is None else [check.limit(e, "expect") for e in expect]
    _, rows = await rows_to_write(s, sid, summary, line, "summary", if_none=EMPTY_SUMMARY)
    empty = not summary
    columns = [list(c) for c in zip(*rows, strict=True)]
    args = (s.tenant, sid, uid, line, start, expected, *columns, prune)
    records = await s.write("compact", lambda c: c.fetch(s.queries.compact, *args), session_id=sid)
    outcome = records[0]["outcome"] if records else Outcome.NO_SESSION
    if outcome == Outcome.NO_SESSION:
        raise SessionNotFound(f"session {sid!r} does not exist")
    if outcome == Outcome.OTHER_OWNER:
        raise SessionOwnershipError(f"session {sid!r} belongs to another user")
    if outcome in (Outcome.STALE, Outcome.NOTHING):
        return None
    if empty:
        return []
    before = records[-1]["seq"] + 1
    stored = await get_messages(s, sid, len(rows), before, None, None, line, None, True)
    ids = {r["id"] for r in records}
    return [m for m in stored if m.id in ids]
