"""Running the append statements and reading their answers (one session, or many at once).

Shared by the store (a lone append) and the coalescer (many callers' appends in one
statement); the SQL itself is in :mod:`convostore._sql`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ._runner import Runner
from ._sql import Queries
from ._types import Connection
from ._validate import Row
from .errors import SessionNotFound, SessionOwnershipError

Stored = list[Any]
"""The stored rows of a request: records with ``id``, ``seq``, ``created_at``, ``conflict``."""

Owner = tuple[str, str] | None
"""``(user_id, agent_name)`` to create the session on first write, or ``None``."""


@dataclass(slots=True)
class AppendRequest:
    """One caller's batch for one session."""

    session_id: str
    rows: list[Row]
    create_as: Owner


@dataclass(slots=True)
class ManyOutcome:
    """What one multi-session statement did, per request (by position in the batch)."""

    stored: dict[int, Stored] = field(default_factory=dict)
    busy: list[int] = field(default_factory=list)  # session row held by another transaction
    missing: list[int] = field(default_factory=list)  # nothing stored: no session, other owner, or a race


class Appender:
    """Sends appends through a :class:`Runner` (retried within the call's deadline)."""

    def __init__(self, runner: Runner, queries: Queries) -> None:
        self._runner = runner
        self._q = queries

    async def one(self, request: AppendRequest, *, deadline: float | None = None) -> Stored:
        """Append one request in one statement; raises :class:`SessionNotFound` or
        :class:`SessionOwnershipError` when it cannot be stored."""
        sid, create_as = request.session_id, request.create_as
        columns = [list(col) for col in zip(*request.rows, strict=True)]
        if create_as is None:
            sql, args = self._q.append, (sid, *columns)
        else:
            sql, args = self._q.append_or_create, (sid, *columns, *create_as)
        ids = columns[0]
        q = self._q

        async def append(conn: Connection) -> Stored:
            try:
                stored = await conn.fetch(sql, *args)
            except asyncpg.UniqueViolationError:
                # Rolled back whole. Either an identical batch committed just before us (run
                # again: it now reads as a replay) or an id is reused (raises again: the
                # caller's DuplicateMessageId).
                stored = await conn.fetch(sql, *args)
            if not stored:
                # Nothing inserted and nothing found: unknown session, another owner, or an
                # identical batch racing us (rare: then it is stored, so read it back).
                owner = await conn.fetchval(q.session_owner, sid)
                if owner is None:
                    raise SessionNotFound(f"session {sid!r} does not exist")
                if create_as is not None and owner != create_as[0]:
                    raise SessionOwnershipError(f"session {sid!r} belongs to another user")
                stored = await conn.fetch(q.messages_by_id, sid, ids)
            return stored

        return await self._runner.run("add_messages", append, session_id=sid, deadline=deadline)

    async def many(self, batch: Sequence[AppendRequest], *, deadline: float | None = None) -> ManyOutcome:
        """Append every request of *batch* (all plain, or all create-on-write, one owner per
        session) in one statement and one commit."""
        create = batch[0].create_as is not None
        columns: list[list[Any]] = [[] for _ in range(10)]
        for index, request in enumerate(batch):
            owner, agent = request.create_as or (None, None)
            for row in request.rows:
                values = (request.session_id, *row, index, owner, agent)
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
        sql = self._q.append_many_or_create if create else self._q.append_many

        async def run(conn: Connection) -> list[Any]:
            return await conn.fetch(sql, *columns)

        records = await self._runner.run("add_messages", run, deadline=deadline)
        busy_sessions = {r["session_id"] for r in records if r["busy"]}
        found = {(r["session_id"], r["id"]): r for r in records if not r["busy"]}
        outcome = ManyOutcome()
        for index, request in enumerate(batch):
            sid = request.session_id
            stored = [found[key] for row in request.rows if (key := (sid, row[0])) in found]
            if stored:
                outcome.stored[index] = stored
            elif sid in busy_sessions:
                outcome.busy.append(index)
            else:
                outcome.missing.append(index)
        return outcome

    async def owners(self, session_ids: list[str], *, deadline: float | None = None) -> dict[str, str]:
        """The owner of each of *session_ids* that exists."""

        async def read(conn: Connection) -> list[Any]:
            return await conn.fetch(self._q.session_owners, session_ids)

        rows = await self._runner.run("add_messages", read, deadline=deadline)
        return {r["id"]: r["user_id"] for r in rows}
