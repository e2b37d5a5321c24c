"""Messages: appending (the write path), reading a branch's view, popping and clearing.

The append path is validate, count tokens, check ids, seal (:func:`rows_to_write`, shared
with compaction), then one statement: a lone append is one ``APPEND_ONE``/``APPEND_ROWS``
(:mod:`convostore._appends`), sent from the caller's own call whether or not appends are
coalesced (:mod:`convostore._coalesce`). It is kept lean: no I/O but the statement once the
event loop knows whether the tenant is sealed, and nothing allocated per call that the
rows do not need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from . import _branches
from . import _validate as check
from ._appends import AppendRequest, Outcome
from ._attempts import settle_despite_cancel
from ._coalesce import AppendWriter
from ._crypto import same_message
from ._rows import messages_from_rows
from ._scope import Scope, fetch
from ._validate import Row
from .errors import (
    ConfigurationError,
    DuplicateMessageId,
    InvalidInput,
    InvalidMessage,
    SessionOwnershipError,
)
from .models import Message, NewMessage, new_message
from .windows import Window, fit

Messages = Sequence[NewMessage | Mapping[str, Any]]


def _tokens(s: Scope, row: Row) -> int:
    """A validated row's token count by the store's counter (its raw item, else its text)."""
    assert s.count_tokens is not None
    count = s.count_tokens(check.token_text(row.content, row.tool_calls, row.raw))
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigurationError(f"token_counter returned {count!r}, not a non-negative int")
    return count


async def rows_to_write(
    s: Scope, sid: str, messages: Messages, branch: str, what: str = "messages", if_none: NewMessage | None = None
) -> tuple[list[Row], list[Row]]:
    """Validate *messages* (*what* they are, for errors; *if_none* stands for an empty
    sequence), count their tokens, check their ids are unique and seal them: ``(the validated
    rows, the rows as written)``, the same rows without keys, ``([], [])`` for no messages."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InvalidMessage(f"{what} must be a sequence of NewMessage or mappings")
    if not messages and if_none is not None:
        messages = (if_none,)
    rows = [check.message_row(m, i) for i, m in enumerate(messages)]
    if not rows:
        return rows, rows
    if s.count_tokens is not None:
        rows = [row._replace(tokens=_tokens(s, row)) for row in rows]
    if len({row.id for row in rows}) != len(rows):
        raise InvalidMessage("message ids must be unique within a batch")
    sealed = s.sealed_now(sid, rows, branch)
    if sealed is None:
        sealed = await s.sealed_rows(sid, rows, branch)
    return rows, sealed


async def add_messages(
    s: Scope, session_id: str, messages: Messages, user_id: str | None, agent_name: str, branch: str
) -> list[Message]:
    """The store's ``add_messages`` (documented there)."""
    # With user_id the append may create the session.
    sid = check.identifier(session_id, "session_id") if user_id is None else check.new_session_id(session_id)
    line = check.identifier(branch, "branch")
    owner = s.acting_user(user_id)
    agent = check.identifier(agent_name, "agent_name") if user_id is not None else None
    plain, rows = await rows_to_write(s, sid, messages, line)
    if not rows:
        return []
    supplied = any((m.id if isinstance(m, NewMessage) else m.get("id")) is not None for m in messages)
    request = AppendRequest(s.tenant, sid, rows, owner, agent, probe=supplied, branch=line)
    runner = s.runner
    deadline = runner.deadline()
    if s.coalesce:
        writer = runner.loop_local("appends", partial(AppendWriter, s.appender))
        stored = await writer.submit(request, deadline)
    else:
        stored = await settle_despite_cancel(s.appender.one(request, deadline=deadline))
    if len(stored) != len(rows) or (
        any(r["outcome"] == Outcome.CONFLICT for r in stored) and not await _same_after_all(s, sid, stored, plain)
    ):
        raise DuplicateMessageId(
            f"session {sid!r} already holds different messages with some of these ids: "
            f"{sorted({r['id'] for r in stored})[:5]}"
        )
    by_id = {r["id"]: r for r in stored}
    result = []
    for row, original in zip(rows, messages, strict=True):
        rec = by_id[row.id]
        if isinstance(original, NewMessage):
            role, content, tool_calls = original.role, original.content, original.tool_calls
            tool_call_id, raw = original.tool_call_id, original.raw
        else:
            role, content, tool_calls = original["role"], original["content"], original.get("tool_calls")
            tool_call_id, raw = original.get("tool_call_id"), original.get("raw")
        result.append(
            new_message(
                row.id, sid, rec["seq"], role, content, tool_calls, tool_call_id, raw, rec["created_at"], line, None
            )
        )
    result.sort(key=lambda m: m.seq)
    return result


async def _same_after_all(s: Scope, sid: str, stored: Sequence[Any], sent: Sequence[Row]) -> bool:
    """Whether the stored rows the append function found holding other messages (CONFLICT)
    hold the same ones after all: the digest it compares is keyed, so a row sealed under
    another key (rotation since), or stored before encryption, never matches it. Read
    and opened here, off the normal path (a replay under the current key is REPLAYED)."""
    if s.keyring is None:
        return False
    conflicting = [r["id"] for r in stored if r["outcome"] == Outcome.CONFLICT]
    args: tuple[Any, ...] = (s.tenant, [sid] * len(conflicting), conflicting, [])
    found = await s.run("add_messages", partial(fetch, s.queries.import_stored_messages, args), session_id=sid)
    by_id = {r["id"]: r for r in found}
    sent_by_id = {row.id: row for row in sent}
    for mid in conflicting:
        row = by_id.get(mid)
        if row is None:
            return False
        if row["sealed"] is None:
            opened = (row["content"], row["tool_calls"], row["raw"])
        else:
            opened = s.opener(sid, mid, row["key_id"], row["sealed"], row["role"], row["tool_call_id"], row["branch"])
        if not same_message(row, opened, sent_by_id[mid]):
            return False
    return True


async def get_messages(
    s: Scope,
    session_id: str,
    limit: int | None,
    before_seq: int | None,
    after_seq: int | None,
    user_id: str | None,
    branch: str,
    window: Window | None,
    raw: bool,
) -> list[Message]:
    """The store's ``get_messages`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    n = check.limit(limit)
    below = check.limit(before_seq, "before_seq")
    above = check.limit(after_seq, "after_seq")
    uid = s.acting_user(user_id)
    line = check.identifier(branch, "branch")
    if window is not None and not isinstance(window, Window):
        raise InvalidInput(f"window must be a Window, not {type(window).__name__}")
    if window is not None and above is not None:
        raise InvalidInput("a window is the latest messages: it cannot page forwards (after_seq)")
    if not isinstance(raw, bool):
        raise InvalidInput(f"raw must be a bool, not {type(raw).__name__}")
    turns, budget, pinned = (window.turns, window.tokens, window.pinned) if window else (None, None, False)
    args = (s.tenant, sid, uid, below, n, line, raw, turns, budget, pinned, above)
    s.runner.check_bound(s.tenant, uid)
    # No scope transaction around it: the read function sets its scope itself (as the
    # append function does), which saves the round trips of one under row-level security.
    rows = await s.runner.run("get_messages", lambda c: c.fetch(s.queries.read, *args), session_id=sid, route=True)
    if uid is not None and rows and rows[0]["owner"] != uid:
        raise SessionOwnershipError(f"session {sid!r} belongs to another user")
    messages = messages_from_rows([r[1:] for r in rows if r["id"] is not None], sid, s.opener)
    if window is not None and (window.turns is not None or window.tokens is not None):
        return fit(messages, pinned=window.pinned)
    return messages


async def pop_message(s: Scope, session_id: str, user_id: str | None, branch: str) -> Message | None:
    """The store's ``pop_message`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    uid = s.acting_user(user_id)
    line = check.identifier(branch, "branch")
    if line == _branches.MAIN:
        row = await s.write(
            "pop_message",
            lambda c: c.fetchrow(s.queries.pop_message, s.tenant, sid, uid),
            session_id=sid,
            idempotent=False,
        )
        if row is not None:
            return messages_from_rows([row], sid, s.opener)[0]
    # Empty, another user's, or forked (whose branches share rows): decided under the lock.
    return await s.write(
        "pop_message",
        s.in_transaction(_branches.pop, sid, uid, line, s.opener),
        session_id=sid,
        idempotent=False,
    )


async def clear_session(s: Scope, session_id: str, user_id: str | None, branch: str | None) -> int:
    """The store's ``clear_session`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    uid = s.acting_user(user_id)
    if branch is not None:
        line = check.identifier(branch, "branch")
        cleared = await s.write("clear_session", s.in_transaction(_branches.clear, sid, uid, line), session_id=sid)
        if cleared is not None:
            await s.audit("clear_branch", rows=cleared, details={"session_id": sid, "branch": line})
            return cleared
    count = await s.write(
        "clear_session",
        lambda c: c.fetchval(s.queries.clear_session, s.tenant, sid, uid, s.actor),
        session_id=sid,
    )
    if not count and uid is not None:
        why = await s.why_not("check owner", sid, uid)
        if isinstance(why, SessionOwnershipError):
            raise why
    return int(count)
