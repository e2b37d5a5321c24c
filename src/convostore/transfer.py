"""Export and import of sessions as JSON Lines: lossless, streaming, idempotent.

The format, one JSON object per line:

* ``{"type": "session", "id", "user_id", "agent_name", "metadata", "created_at",
  "updated_at", "expires_at", "ttl_seconds", "last_seq"}``
* ``{"type": "branch", "session_id", "name", "parent", "fork_seq", "created_at",
  "deleted_at", "cleared_to"}``: a session's branches, after the line of their session.
* ``{"type": "message", "session_id", "id", "seq", "role", "content", "tool_calls",
  "tool_call_id", "raw", "created_at", "branch", "covers", "tokens"}``, after the line of its
  session: every stored message, those a compaction summary stands for included (a
  summary's ``covers`` is the ``[first, last]`` seq range it replaces in the compacted view).

Times are ISO 8601 with offset and microseconds; strings are exported as stored (U+0000
included, JSON escapes it). Export reads page by page, so memory stays flat however large
the export. Import runs in one transaction: any bad line aborts it with its line number and
nothing is written. Rows already stored identically are skipped, so importing a file twice
changes nothing; rows that disagree with what is stored (another owner, other content under
the same ids) are conflicts, refused unless asked to skip them.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from . import _validate as check
from ._codec import decode_text, dump_json, encode_text, load_json
from ._rows import Opener, messages_from_rows
from ._types import Connection
from .errors import ConvostoreError, ImportConflict, ImportFileError, InvalidInput, SessionNotFound
from .models import ROLES, Message
from .store import PostgresSessionStore
from .windows import estimate_tokens

_PAGE = 500
_MESSAGE_PAGE = 1000
_BATCH = 1000
_MAX_CONFLICTS_KEPT = 1000


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :func:`import_jsonl` did.

    Rows already stored identically are *present*; rows that disagree with what is stored are
    *conflicts* (with ``on_conflict="skip"``; the default refuses the whole file). Messages of
    a conflicting session are *skipped* with it.
    """

    sessions_read: int
    messages_read: int
    sessions_added: int
    messages_added: int
    sessions_present: int = 0
    messages_present: int = 0
    messages_skipped: int = 0
    conflicts: tuple[tuple[int, str], ...] = field(default=())


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def export_jsonl(
    store: PostgresSessionStore,
    *,
    user_id: str | None = None,
    session_id: str | None = None,
    all_tenants: bool = False,
) -> AsyncGenerator[str, None]:
    """Yield the export of the store's tenant (of every tenant with *all_tenants*), one JSON
    line (without newline) at a time; in a user view, only that user's sessions.

    Reads sessions page by page and each session's messages in pages by ``seq``, every page
    one retried statement, so memory stays flat however large the export. An unknown
    *session_id* raises :class:`~convostore.errors.SessionNotFound`. The export is recorded
    in the audit trail once it has been read to the end.
    """
    uid = store.acting_user(user_id)
    sid = check.optional_identifier(session_id, "session_id")
    tenant = await store._scope.tenant_for(all_tenants)
    scope = store.scope(all_tenants)
    runner, q = store._scope.runner, store._scope.queries
    after: tuple[str | None, str | None] = (None, None)
    exported = 0
    while True:
        page = await runner.run("export", _fetch(q.export_sessions_page, tenant, uid, sid, *after, _PAGE), scope=scope)
        if sid is not None and after == (None, None) and not page:
            raise SessionNotFound(f"session {sid!r} does not exist")
        for s in page:
            exported += 1
            yield _dumps(
                {
                    "type": "session",
                    "tenant_id": s["tenant_id"],
                    "id": s["id"],
                    "user_id": s["user_id"],
                    "agent_name": s["agent_name"],
                    "metadata": load_json(s["metadata"]),
                    "created_at": _iso(s["created_at"]),
                    "updated_at": _iso(s["updated_at"]),
                    "expires_at": _iso(s["expires_at"]),
                    "ttl_seconds": s["ttl_seconds"],
                    "last_seq": s["last_seq"],
                }
            )
            branches = await runner.run(
                "export", _fetch(q.branch_rows, s["tenant_id"], s["id"]), session_id=s["id"], scope=scope
            )
            for b in sorted(branches, key=lambda b: (b["created_at"], b["name"])):
                yield _dumps(
                    {
                        "type": "branch",
                        "session_id": s["id"],
                        "name": b["name"],
                        "parent": b["parent"],
                        "fork_seq": b["fork_seq"],
                        "created_at": _iso(b["created_at"]),
                        "deleted_at": _iso(b["deleted_at"]),
                        "cleared_to": b["cleared_to"],
                    }
                )
            seq = 0
            while True:
                messages = await runner.run(
                    "export",
                    _fetch(q.export_messages_page, s["tenant_id"], s["id"], seq, _MESSAGE_PAGE),
                    session_id=s["id"],
                    scope=scope,
                )
                opened = messages_from_rows(
                    [r[:13] for r in messages], s["id"], store._scope.opener_for(s["tenant_id"])
                )
                for m, r in zip(opened, messages, strict=True):
                    yield _dumps(
                        {
                            "type": "message",
                            "session_id": s["id"],
                            "id": m.id,
                            "seq": m.seq,
                            "role": m.role,
                            "content": m.content,
                            "tool_calls": m.tool_calls,
                            "tool_call_id": m.tool_call_id,
                            "raw": m.raw,
                            "created_at": _iso(m.created_at),
                            "branch": m.branch,
                            "covers": None if m.covers is None else list(m.covers),
                            "tokens": r["tokens"],
                        }
                    )
                if len(messages) < _MESSAGE_PAGE:
                    break
                seq = messages[-1]["seq"]
        if len(page) < _PAGE:
            break
        after = (page[-1]["tenant_id"], page[-1]["id"])
    details = {"user_id": uid, "session_id": sid}
    await store.audit("export", rows=exported, all_tenants=all_tenants, details=details)


# C1 controls and the bidirectional overrides stay escaped, so that printing an export to a
# terminal shows them instead of obeying them (JSON already escapes C0 controls).
_UNSAFE = re.compile(r"[\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _dumps(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _fetch(sql: str, *args: Any) -> Callable[[Connection], Any]:
    async def fetch(conn: Connection) -> list[asyncpg.Record]:
        return await conn.fetch(sql, *args)

    return fetch


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
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
                raise ImportFileError(line, "ttl_seconds must be a positive number or null")
            check.duration(ttl, "ttl_seconds")
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ImportFileError(line, "metadata must be an object")
        return (
            check.new_session_id(obj.get("id"), "id"),
            check.scope_name(obj.get("user_id"), "user_id"),
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


def _branch_row(obj: dict[str, Any], line: int) -> tuple[Any, ...]:
    try:
        name = check.identifier(obj.get("name"), "name")
        parent = check.optional_identifier(obj.get("parent"), "parent")
        fork_seq = obj.get("fork_seq")
        if (parent is None) != (name == "main") or (parent is None) != (fork_seq is None):
            raise ImportFileError(line, "a branch other than 'main' has a parent and a fork_seq; 'main' has neither")
        cleared = obj.get("cleared_to")
        return (
            check.identifier(obj.get("session_id"), "session_id"),
            name,
            parent,
            None if fork_seq is None else _int(fork_seq, line, "fork_seq"),
            _time(obj.get("created_at"), line, "created_at"),
            _time(obj.get("deleted_at"), line, "deleted_at", optional=True),
            None if cleared is None else _int(cleared, line, "cleared_to"),
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
        seq = _int(obj.get("seq"), line, "seq")
        covers = obj.get("covers")
        if covers is not None:
            if not isinstance(covers, list) or len(covers) != 2:
                raise ImportFileError(line, "covers must be [first, last] or null")
            first, last = _int(covers[0], line, "covers[0]"), _int(covers[1], line, "covers[1]")
            if not first <= last < seq:
                raise ImportFileError(line, "covers must be a range of seqs before the summary's own")
            covers = (first, last)
        tokens = obj.get("tokens")
        raw_text = None if raw is None else dump_json(raw, "raw")
        calls_text = None if tool_calls is None else dump_json(tool_calls, "tool_calls")
        if tokens is None:  # as counted when appended
            tokens = estimate_tokens(check.token_text(content, calls_text, raw_text))
        return (
            check.identifier(obj.get("session_id"), "session_id"),
            seq,
            check.identifier(obj.get("id"), "id"),
            role,
            encode_text(content),
            calls_text,
            check.optional_identifier(obj.get("tool_call_id"), "tool_call_id"),
            raw_text,
            _time(obj.get("created_at"), line, "created_at"),
            check.identifier(obj.get("branch", "main"), "branch"),
            covers,
            _int(tokens, line, "tokens"),
            check.kind_of(raw),
        )
    except ImportFileError:
        raise
    except ConvostoreError as exc:
        raise ImportFileError(line, str(exc)) from exc


@dataclass
class _Import:
    """The state of one import: decisions about sessions, counts, conflicts."""

    strict: bool
    tenant: str
    user: str | None  # a user view imports that user's sessions only
    opener: Opener
    seal: Callable[..., Any]
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "sessions_read",
                "messages_read",
                "sessions_added",
                "messages_added",
                "sessions_present",
                "messages_present",
                "messages_skipped",
            ),
            0,
        )
    )
    conflicts: list[tuple[int, str]] = field(default_factory=list)
    conflicts_seen: int = 0
    refused: set[str] = field(default_factory=set)  # sessions in conflict: their messages are skipped
    sessions: list[tuple[int, tuple[Any, ...]]] = field(default_factory=list)
    branches: list[tuple[int, tuple[Any, ...]]] = field(default_factory=list)
    messages: list[tuple[int, tuple[Any, ...]]] = field(default_factory=list)

    def conflict(self, line: int, reason: str) -> None:
        self.conflicts_seen += 1
        if len(self.conflicts) < _MAX_CONFLICTS_KEPT:
            self.conflicts.append((line, reason))

    @property
    def writing(self) -> bool:
        """Whether rows are still written (a strict import stops at its first conflict, and
        only goes on reading to report every conflict)."""
        return not (self.strict and self.conflicts_seen)

    async def flush(self, conn: Connection, q: Any) -> None:
        sessions, self.sessions = self.sessions, []
        branches, self.branches = self.branches, []
        messages, self.messages = self.messages, []
        if sessions:
            await self._sessions(conn, q, sessions)
        if branches:
            await self._branches(conn, q, branches)
        if messages:
            await self._messages(conn, q, messages)

    async def _branches(self, conn: Connection, q: Any, batch: list[tuple[int, tuple[Any, ...]]]) -> None:
        wanted = [(line, row) for line, row in batch if row[0] not in self.refused]
        if not wanted:
            return
        stored_rows = await conn.fetch(q.import_stored_branches, self.tenant, list({row[0] for _, row in wanted}))
        stored = {(r["session_id"], r["name"]): tuple(r)[2:] for r in stored_rows}
        new = {}
        for line, row in wanted:
            have = stored.get((row[0], row[1]))
            if have is None:
                new[(row[0], row[1])] = row
            elif have != (row[2], row[3], row[5], row[6]):
                self.conflict(line, f"branch {row[1]!r} of session {row[0]!r} differs from the stored one")
        if new and self.writing:
            await conn.execute(q.import_branches, self.tenant, *[list(c) for c in zip(*new.values(), strict=True)])

    async def _sessions(self, conn: Connection, q: Any, batch: list[tuple[int, tuple[Any, ...]]]) -> None:
        stored_rows = await conn.fetch(q.import_stored_sessions, self.tenant, [row[0] for _, row in batch])
        stored = {r["id"]: r for r in stored_rows}
        new: dict[str, tuple[Any, ...]] = {}
        for line, row in batch:
            sid, user, agent = row[0], row[1], row[2]
            have = stored.get(sid)
            if self.user is not None and user != self.user:
                self.refused.add(sid)
                self.conflict(line, f"session {sid!r} belongs to {user!r}; importing for {self.user!r} only")
            elif have is None:
                if sid in new:  # the same session twice in the file: the first one counts
                    self.counts["sessions_present"] += 1
                else:
                    new[sid] = row
            elif have["user_id"] != user:
                self.refused.add(sid)
                self.conflict(line, f"session {sid!r} belongs to another user; the file says {user!r}")
            elif have["agent_name"] != agent:
                self.refused.add(sid)
                self.conflict(line, f"session {sid!r} is {have['agent_name']!r}'s; the file says {agent!r}")
            else:
                self.counts["sessions_present"] += 1
        if new and self.writing:
            await conn.execute(q.import_sessions, self.tenant, *[list(c) for c in zip(*new.values(), strict=True)])
            self.counts["sessions_added"] += len(new)

    async def _messages(self, conn: Connection, q: Any, batch: list[tuple[int, tuple[Any, ...]]]) -> None:
        wanted = [(line, row) for line, row in batch if row[0] not in self.refused]
        self.counts["messages_skipped"] += len(batch) - len(wanted)
        if not wanted:
            return
        keys = [row[0] for _, row in wanted], [row[2] for _, row in wanted], [row[1] for _, row in wanted]
        stored_rows = await conn.fetch(q.import_stored_messages, self.tenant, *keys)
        stored = [messages_from_rows([r[:13]], r["session_id"], self.opener)[0] for r in stored_rows]
        by_id = {(m.session_id, m.id): m for m in stored}
        by_seq = {(m.session_id, m.seq): m for m in stored}
        new: dict[tuple[str, str], tuple[Any, ...]] = {}
        taken_seqs: set[tuple[str, int]] = set()
        for line, row in wanted:
            sid, seq, mid = row[0], row[1], row[2]
            have = by_id.get((sid, mid))
            if have is not None:
                if _same_message(have, row):
                    self.counts["messages_present"] += 1
                else:
                    self.conflict(line, f"message {mid!r} of session {sid!r} differs from the stored one")
            elif (other := by_seq.get((sid, seq))) is not None or (sid, seq) in taken_seqs:
                holder = other.id if other is not None else "another line of this file"
                self.conflict(line, f"seq {seq} of session {sid!r} already holds message {holder!r}")
            elif (sid, mid) in new:
                self.conflict(line, f"message {mid!r} of session {sid!r} appears twice in the file")
            else:
                new[(sid, mid)] = row
                taken_seqs.add((sid, seq))
        if new and self.writing:
            rows = [self.stored_form(row) for row in new.values()]
            await conn.execute(q.import_messages, self.tenant, *[list(c) for c in zip(*rows, strict=True)])
            await conn.execute(q.raise_last_seq, self.tenant, list({key[0] for key in new}))
            self.counts["messages_added"] += len(new)

    def stored_form(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """An import row (``_message_row``) as it is inserted: with its sealed columns, and
        its content, tool calls and raw item sealed when the store seals messages."""
        sid, seq, mid, role, content, tool_calls, tool_call_id, raw, created_at, branch, covers, tokens, kind = row
        message = self.seal(sid, (mid, role, content, tool_calls, tool_call_id, raw, None, None, 0, None), branch)
        _, _, content, tool_calls, _, raw, key_id, sealed, _, _ = message
        first, last = covers if covers is not None else (None, None)
        return (
            *(sid, seq, mid, role, content, tool_calls, tool_call_id, raw, created_at),
            *(key_id, sealed, branch, first, last, tokens, kind),
        )

    def report(self) -> ImportReport:
        return ImportReport(**self.counts, conflicts=tuple(self.conflicts))


def _same_message(stored: Message, row: tuple[Any, ...]) -> bool:
    """Whether a stored message equals an import row (``_message_row``'s shape); times aside."""
    return bool(
        stored.seq == row[1]
        and stored.role == row[3]
        and stored.content == decode_text(row[4])
        and stored.tool_calls == (None if row[5] is None else load_json(row[5]))
        and stored.tool_call_id == row[6]
        and stored.raw == (None if row[7] is None else load_json(row[7]))
        and stored.branch == row[9]
        and stored.covers == row[10]
    )


async def import_jsonl(
    store: PostgresSessionStore,
    lines: Iterable[str],
    *,
    on_conflict: Literal["error", "skip"] = "error",
    on_line: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import an export (see the module docstring) in one transaction.

    Every row is compared with what is stored first: identical rows are skipped as present,
    absent rows are inserted, and rows that disagree (a session of another user or agent,
    other content under a stored message id or seq) are conflicts. By default any conflict
    raises :class:`~convostore.errors.ImportConflict` listing them, and nothing is written;
    with ``on_conflict="skip"`` they are skipped (with the messages of a conflicting
    session) and listed in the report. Nothing is ever written into another user's session.

    A malformed line raises :class:`ImportFileError` (an ``InvalidInput``) naming it; then
    nothing is written. *on_line* is called with each line number (progress).
    """
    if on_conflict not in ("error", "skip"):
        raise InvalidInput(f"on_conflict must be 'error' or 'skip', not {on_conflict!r}")
    q = store._scope.queries
    state = _Import(
        strict=on_conflict == "error",
        tenant=store.tenant,
        user=store.user,
        opener=store._scope.opener_for(store.tenant),
        seal=store._scope.seal_row,
    )
    declared: set[str] = set()
    async with store._scope.runner.transaction("import", scope=store.scope()) as conn:
        try:
            await _read(state, declared, lines, on_line, conn, q)
        except asyncpg.UniqueViolationError as exc:
            raise ImportConflict(
                [(0, "a session or message was written by someone else during the import; run it again")]
            ) from exc
        if state.strict and state.conflicts_seen:
            raise ImportConflict(state.conflicts)
        report = state.report()
        details = {
            "sessions": report.sessions_added,
            "messages": report.messages_added,
            "conflicts": len(report.conflicts),
        }
        await conn.execute(q.audit, *store._scope.audit_args("import", rows=report.messages_added, details=details))
    return report


async def _read(
    state: _Import,
    declared: set[str],
    lines: Iterable[str],
    on_line: Callable[[int], None] | None,
    conn: Connection,
    q: Any,
) -> None:
    """Read *lines*, validating each and flushing every ``_BATCH`` rows through *state*."""
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
            state.counts["sessions_read"] += 1
            tenant = obj.get("tenant_id", state.tenant)
            if tenant != state.tenant:  # a store imports into its own tenant only
                state.refused.add(row[0])
                state.conflict(number, f"session {row[0]!r} is of tenant {tenant!r}; importing into {state.tenant!r}")
            else:
                state.sessions.append((number, row))
        elif kind == "branch":
            row = _branch_row(obj, number)
            if row[0] not in declared:
                raise ImportFileError(number, f"branch of session {row[0]!r}, whose line does not come first")
            state.branches.append((number, row))
        elif kind == "message":
            row = _message_row(obj, number)
            if row[0] not in declared:
                raise ImportFileError(number, f"message for session {row[0]!r}, whose line does not come first")
            state.messages.append((number, row))
            state.counts["messages_read"] += 1
        else:
            raise ImportFileError(number, f"unknown line type {kind!r} (expected 'session', 'branch' or 'message')")
        if len(state.sessions) + len(state.branches) + len(state.messages) >= _BATCH:
            await state.flush(conn, q)
    await state.flush(conn, q)
