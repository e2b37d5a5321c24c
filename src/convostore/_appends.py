"""Running appends (``convostore_append``, or ``convostore_append_sharded`` on distributed
tables) and reading their answers.

Shared by the store (a lone append) and the coalescer (many callers' appends in one call);
the function itself is in :mod:`convostore._sql`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import asyncpg

from ._runner import Runner
from ._sql import Queries
from ._types import Connection
from ._validate import Row
from .errors import SessionNotFound, SessionOwnershipError

Stored = list[Any]
"""The stored rows of a request: records with ``id``, ``seq``, ``created_at``, ``outcome``."""


class Outcome(StrEnum):
    """What the append (and compaction) functions say of a row or a request, in their
    ``outcome`` column. A ``StrEnum``: it compares equal to the letter the SQL returns."""

    INSERTED = "i"
    REPLAYED = "r"  # already stored, identical (a retry)
    CONFLICT = "c"  # the id is stored, holding another message
    NO_SESSION = "n"
    OTHER_OWNER = "o"  # the session belongs to another user
    BUSY = "b"  # the session's row is held by another transaction (not waited for)
    STALE = "s"  # compaction: the view changed since the summary was made
    NOTHING = "e"  # compaction: nothing to replace


Owner = tuple[str, str] | None
"""``(user_id, agent_name)`` to create the session on first write, or ``None``."""


@dataclass(slots=True)
class AppendRequest:
    """One caller's batch for one session of one tenant.

    *owner*: the user who must own the session (``None``: any user of the tenant). *agent*:
    create the session on first write for this agent (then *owner* is required). *probe*:
    the ids were chosen by the caller, so the batch may already be stored even on a first
    attempt (retries always look). *branch*: the session's branch written to.
    """

    tenant: str
    session_id: str
    rows: list[Row]
    owner: str | None = None
    agent: str | None = None
    probe: bool = False
    branch: str = "main"

    @property
    def create_as(self) -> Owner:
        return None if self.agent is None or self.owner is None else (self.owner, self.agent)


@dataclass(slots=True)
class ManyOutcome:
    """What one coalesced call did, per request (by position in the batch)."""

    stored: dict[int, Stored] = field(default_factory=dict)
    busy: list[int] = field(default_factory=list)  # session row held by another transaction
    refused: dict[int, Exception] = field(default_factory=dict)  # no such session, or another user's


def _refusal(outcome: str, sid: str) -> Exception:
    if outcome == Outcome.OTHER_OWNER:
        return SessionOwnershipError(f"session {sid!r} belongs to another user")
    return SessionNotFound(f"session {sid!r} does not exist")


class Appender:
    """Sends appends through a :class:`Runner` (retried within the call's deadline)."""

    def __init__(self, runner: Runner, queries: Queries) -> None:
        self._runner = runner
        self._q = queries

    @property
    def distributed(self) -> bool:
        """Whether the tables are distributed: then a call may only carry sessions of one node
        (it is delegated whole to the node holding its first session)."""
        return self._runner.distributed

    def group_of(self, session_id: str) -> object:
        """Which appends may share a call with *session_id*'s: any (undistributed tables), those
        of sessions on the same node (distributed tables, by the shard map), or only the
        session's own (distributed tables whose map could not be read)."""
        if not self._runner.distributed:
            return None
        if self._runner.routes is None:
            return ("session", session_id)
        return ("node", self._runner.node_of(session_id))

    @property
    def by_node(self) -> bool:
        """Whether appends of one node's sessions share a call (see :meth:`group_of`)."""
        return self._runner.distributed and self._runner.routes is not None

    def _args(self, batch: Sequence[AppendRequest], probe: bool, wait: bool) -> tuple[Any, ...]:
        # Per message: its request, session, owner, agent, branch, then its columns.
        columns: list[list[Any]] = [[] for _ in range(15)]
        for index, request in enumerate(batch, start=1):
            head = (index, request.session_id, request.owner, request.agent, request.branch)
            for row in request.rows:
                for column, value in zip(columns, (*head, *row), strict=True):
                    column.append(value)
        first = batch[0]
        scope_user = first.owner if all(r.owner == first.owner for r in batch) else None
        return (first.tenant, first.session_id, scope_user, probe, wait, *columns)

    def _lean(self, batch: Sequence[AppendRequest]) -> tuple[str, tuple[Any, ...]] | None:
        """The one-statement append (``_sql.APPEND_ONE``/``APPEND_ROWS``) and its arguments,
        where it applies: one request to 'main', on tables that are not distributed, by a role
        not under row-level security (whose scope the function sets)."""
        if len(batch) != 1 or batch[0].branch != "main" or self._runner.distributed or self._runner.row_security:
            return None
        request = batch[0]
        head = (request.tenant, request.session_id, request.owner)
        if len(request.rows) == 1:
            return self._q.append_one, (*head, *request.rows[0])
        return self._q.append_rows, (*head, *(list(column) for column in zip(*request.rows, strict=True)))

    async def _call(
        self, batch: Sequence[AppendRequest], wait: bool, deadline: float | None, *, alone: bool = False
    ) -> list[Any]:
        # On distributed tables, the function that writes the shards' own tables where it can.
        sql = self._q.append_sharded if self._runner.distributed else self._q.append
        for request in batch:
            self._runner.check_bound(request.tenant, request.owner)
        first_attempt = [any(r.probe for r in batch)]
        lean = self._lean(batch) if alone else None

        async def append(conn: Connection) -> list[Any]:
            # Only a retry (or caller-chosen ids) can find its batch already stored.
            probe = first_attempt.pop() if first_attempt else True
            if lean is not None:
                try:
                    records = await conn.fetch(lean[0], *lean[1])
                except asyncpg.UniqueViolationError:
                    probe = True  # nothing written: stored before (a replay), or an id reused
                else:
                    if records:
                        return records
                    # Nothing written: the function creates, checks branches, or says why.
            try:
                return await conn.fetch(sql, *self._args(batch, probe, wait))
            except asyncpg.UniqueViolationError:
                # Rolled back whole. An identical batch committed just before us (run again:
                # it now reads as a replay), or an id is reused (flagged CONFLICT this time).
                return await conn.fetch(sql, *self._args(batch, True, wait))

        return await self._runner.run(
            "add_messages", append, session_id=batch[0].session_id, deadline=deadline, route=True
        )

    async def one(self, request: AppendRequest, *, deadline: float | None = None) -> Stored:
        """Append one request, waiting for its session's row if another transaction holds it;
        raises :class:`SessionNotFound` or :class:`SessionOwnershipError`."""
        records = await self._call([request], True, deadline, alone=True)
        for r in records:
            if r["id"] is None:
                raise _refusal(r["outcome"], request.session_id)
        return records

    async def many(
        self, batch: Sequence[AppendRequest], *, deadline: float | None = None, wait: bool = False
    ) -> ManyOutcome:
        """Append every request of *batch* (one owner per session) in one call and one commit;
        sessions another transaction holds are reported busy instead of waited for (with
        *wait*, waited for: for requests of one session, which nothing else could go on with)."""
        records = await self._call(batch, wait, deadline)
        outcome = ManyOutcome()
        inserted: dict[tuple[str, str], Any] = {}
        for r in records:
            if r["req"] is None:
                inserted[(r["session_id"], r["id"])] = r
            elif r["id"] is not None:
                outcome.stored.setdefault(r["req"] - 1, []).append(r)
            elif r["outcome"] == Outcome.BUSY:
                outcome.busy.append(r["req"] - 1)
            else:
                outcome.refused[r["req"] - 1] = _refusal(r["outcome"], r["session_id"])
        for index, request in enumerate(batch):
            stored = [inserted[key] for row in request.rows if (key := (request.session_id, row.id)) in inserted]
            if stored:
                outcome.stored[index] = stored
        return outcome
