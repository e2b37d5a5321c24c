"""Branches of a session: forks that share their parent's rows, and what deleting keeps.

A branch's view is its *line*: its own rows, then its parent's up to the fork, and so on
to ``main``; one counter orders the whole session, so a line is read by seq like a plain
session. Nothing is copied when forking. Deleting (or clearing) a branch removes its own
rows except those a live branch's line still reaches; a deleted branch keeps its row while
any live branch descends from it, so that its shared rows stay attributed.

Each operation runs in one transaction that first locks the session's row: they serialize
with each other and with appends, which lock it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import _validate as check
from ._rows import Opener, messages_from_rows
from ._scope import Scope
from ._sql import Queries
from ._types import Connection
from .errors import BranchConflict, BranchExists, BranchNotFound, InvalidInput, SessionNotFound, SessionOwnershipError
from .models import Branch, Message

MAIN = "main"
MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class _Row:
    name: str
    parent: str | None
    fork_seq: int | None
    created_at: datetime | None
    deleted_at: datetime | None
    cleared_to: int | None


class Lines:
    """A session's branches as stored, and the lines they make."""

    def __init__(self, rows: Iterable[Any]) -> None:
        self.rows = {r["name"]: _Row(*r) for r in rows}

    def live(self, name: str) -> bool:
        row = self.rows.get(name)
        if name == MAIN:
            return row is None or row.deleted_at is None
        return row is not None and row.deleted_at is None

    def names(self) -> list[str]:
        """Every live branch, ``main`` first, then by creation."""
        forks = sorted(
            (r for r in self.rows.values() if r.name != MAIN and r.deleted_at is None),
            key=lambda r: (r.created_at or datetime.min, r.name),
        )
        return ([MAIN] if self.live(MAIN) else []) + [r.name for r in forks]

    def line(self, name: str) -> tuple[list[str], list[int]]:
        """The branches of *name*'s line and the last seq each contributes."""
        names, limits, limit = [], [], MAX_SEQ
        while True:
            names.append(name)
            limits.append(limit)
            row = self.rows.get(name)
            if row is None or row.parent is None or row.fork_seq is None:
                return names, limits
            limit = min(limit, row.fork_seq)
            name = row.parent

    def floor(self, name: str) -> int:
        row = self.rows.get(name)
        return 0 if row is None or row.cleared_to is None else row.cleared_to

    def shared(self, name: str) -> int:
        """The last seq of *name*'s own rows that another live branch's line reaches (0: none)."""
        best = 0
        for other in self.names():
            if other == name:
                continue
            names, limits = self.line(other)
            if name in names:
                best = max(best, limits[names.index(name)])
        return best

    def require(self, name: str, sid: str) -> None:
        if not self.live(name):
            raise BranchNotFound(f"session {sid!r} has no branch {name!r}")


async def _lock(conn: Connection, q: Queries, tenant: str, sid: str, user: str | None, missing_ok: bool = False) -> Any:
    row = await conn.fetchrow(q.lock_session, tenant, sid)
    if row is None:
        if missing_ok:
            return None
        raise SessionNotFound(f"session {sid!r} does not exist")
    if user is not None and row["user_id"] != user:
        raise SessionOwnershipError(f"session {sid!r} belongs to another user")
    return row


async def _lines(conn: Connection, q: Queries, tenant: str, sid: str) -> Lines:
    return Lines(await conn.fetch(q.branch_rows, tenant, sid))


async def _last_in_line(
    conn: Connection, q: Queries, tenant: str, sid: str, lines: Lines, name: str, upto: int = MAX_SEQ
) -> Any:
    names, limits = lines.line(name)
    return await conn.fetchrow(q.line_last, tenant, sid, names, limits, lines.floor(name), upto)


async def fork(
    conn: Connection, q: Queries, tenant: str, sid: str, user: str | None, name: str, parent: str, at: int | None
) -> Branch:
    """Fork *parent* at seq *at* (default: its latest message; 0: none of them) as *name*."""
    session = await _lock(conn, q, tenant, sid, user)
    lines = await _lines(conn, q, tenant, sid) if session["forked"] else Lines(())
    lines.require(parent, sid)
    if name == MAIN or name in lines.rows:
        raise BranchExists(f"session {sid!r} already has a branch {name!r}")
    floor = lines.floor(parent)
    if at is None:
        last = await _last_in_line(conn, q, tenant, sid, lines, parent)
        at = floor if last is None else last["seq"]
    elif at > floor:
        last = await _last_in_line(conn, q, tenant, sid, lines, parent, at)
        if last is None or last["seq"] != at:
            raise InvalidInput(f"seq {at} is not a message of branch {parent!r} of session {sid!r}")
    elif at != 0 and at != floor:
        raise InvalidInput(f"seq {at} is not a message of branch {parent!r} of session {sid!r}")
    at = max(at, floor)
    created = await conn.fetchval(q.insert_branch, tenant, sid, name, session["user_id"], parent, at, floor)
    if created is None:
        raise BranchExists(f"session {sid!r} already has a branch {name!r}")
    if not session["forked"]:
        await conn.execute(q.mark_forked, tenant, sid)
    return Branch(name, parent, at, created, 0)


async def branches(conn: Connection, q: Queries, tenant: str, sid: str, user: str | None) -> list[Branch]:
    """The session's live branches, ``main`` first."""
    session = await conn.fetchrow(q.session_owner_forked, tenant, sid)
    if session is None:
        raise SessionNotFound(f"session {sid!r} does not exist")
    if user is not None and session["user_id"] != user:
        raise SessionOwnershipError(f"session {sid!r} belongs to another user")
    lines = await _lines(conn, q, tenant, sid) if session["forked"] else Lines(())
    counts = {r["branch"]: r["n"] for r in await conn.fetch(q.branch_counts, tenant, sid)}
    result = []
    for name in lines.names():
        row = lines.rows.get(name)
        parent, fork_seq, created = (row.parent, row.fork_seq, row.created_at) if row else (None, None, None)
        result.append(Branch(name, parent, fork_seq, created, counts.get(name, 0)))
    return result


async def _trim_deleted(conn: Connection, q: Queries, tenant: str, sid: str, lines: Lines) -> int:
    """Remove the rows of deleted branches that no live branch reaches, and the branch rows
    of those (other than ``main``) that nothing live descends from; return how many messages."""
    removed = 0
    unneeded = []
    for name, row in lines.rows.items():
        if row.deleted_at is None:
            continue
        keep = lines.shared(name)
        removed += await conn.fetchval(q.trim_branch, tenant, sid, name, keep)
        if keep == 0 and name != MAIN:
            unneeded.append(name)
    if unneeded:
        await conn.execute(q.drop_branches, tenant, sid, unneeded)
    return removed


async def delete(conn: Connection, q: Queries, tenant: str, sid: str, user: str | None, name: str) -> int:
    """Delete branch *name*: its own rows go, except those live branches share. Returns how
    many rows were removed."""
    session = await _lock(conn, q, tenant, sid, user)
    lines = await _lines(conn, q, tenant, sid) if session["forked"] else Lines(())
    lines.require(name, sid)
    await conn.execute(q.delete_branch, tenant, sid, name, session["user_id"])
    return await _trim_deleted(conn, q, tenant, sid, await _lines(conn, q, tenant, sid))


async def clear(conn: Connection, q: Queries, tenant: str, sid: str, user: str | None, name: str) -> int | None:
    """Clear branch *name*'s view (rows live branches share stay for them). ``None`` when
    the session was never forked and *name* is ``main`` (or there is no such session): then
    the plain clear applies."""
    session = await _lock(conn, q, tenant, sid, user, missing_ok=True)
    if session is None:
        return None
    if not session["forked"]:
        if name != MAIN:
            raise BranchNotFound(f"session {sid!r} has no branch {name!r}")
        return None
    lines = await _lines(conn, q, tenant, sid)
    lines.require(name, sid)
    await conn.execute(q.clear_branch, tenant, sid, name, session["user_id"], session["last_seq"])
    removed: int = await conn.fetchval(q.trim_branch, tenant, sid, name, lines.shared(name))
    return removed


async def pop(
    conn: Connection, q: Queries, tenant: str, sid: str, user: str | None, name: str, opener: Opener | None
) -> Message | None:
    """Remove and return the newest message of branch *name*'s view (compacted: a summary is
    popped, not what it hides); :class:`BranchConflict` if that message is shared with another
    branch (its parent's, or forked from). ``None`` if there is none (or no such session)."""
    session = await _lock(conn, q, tenant, sid, user, missing_ok=True)
    if session is None:
        return None
    lines = await _lines(conn, q, tenant, sid) if session["forked"] else Lines(())
    lines.require(name, sid)
    while True:
        # The newest message of the view (what compaction hides is not in it).
        last = await conn.fetchrow(q.read, tenant, sid, None, None, 1, name, False, None, None, False, None)
        if last is None or last["seq"] is None:
            return None
        if last["branch"] != name or last["seq"] <= lines.shared(name):
            raise BranchConflict(
                f"the newest message of branch {name!r} (seq {last['seq']}) is shared with another branch; "
                "delete that branch first"
            )
        row = await conn.fetchrow(q.pop_seq, tenant, sid, last["seq"])
        if row is not None:
            return messages_from_rows([row], sid, opener)[0]
        # Deleted since it was read, by a statement that does not take the session's lock
        # (a retention job's): read the view again.


# -- the store's calls (each one transaction, through the view's scope) -------------------------


async def fork_session(
    s: Scope, session_id: str, name: str, at_seq: int | None, parent: str, user_id: str | None
) -> Branch:
    """The store's ``fork_session`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    line = check.identifier(name, "name")
    origin = check.identifier(parent, "parent")
    at = check.limit(at_seq, "at_seq")
    uid = s.acting_user(user_id)
    return await s.write(
        "fork_session", s.in_transaction(fork, sid, uid, line, origin, at), session_id=sid, idempotent=False
    )


async def list_branches(s: Scope, session_id: str, user_id: str | None) -> list[Branch]:
    """The store's ``list_branches`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    uid = s.acting_user(user_id)
    return await s.run("list_branches", s.in_transaction(branches, sid, uid), session_id=sid)


async def delete_branch(s: Scope, session_id: str, name: str, user_id: str | None) -> int:
    """The store's ``delete_branch`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    line = check.identifier(name, "name")
    uid = s.acting_user(user_id)
    removed = await s.write("delete_branch", s.in_transaction(delete, sid, uid, line), session_id=sid)
    await s.audit("delete_branch", rows=removed, details={"session_id": sid, "branch": line})
    return removed
