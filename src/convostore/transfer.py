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
* ``{"type": "end", "lines", "sessions", "branches", "messages", "sha256"}``, last: how many
  lines (of each type) come before it, and the SHA-256 of their bytes as written (each line
  UTF-8 encoded and ended by a newline). An export cut short has none, so import refuses it
  (unless asked to take it as partial); one changed after export no longer matches it.

Times are ISO 8601 with offset and microseconds; strings are exported as stored (U+0000
included, JSON escapes it). Export reads page by page, so memory stays flat however large
the export. Import runs in one transaction: any bad line aborts it with its line number and
nothing is written. Rows already stored identically are skipped, so importing a file twice
changes nothing; rows that disagree with what is stored (another owner, other content under
the same ids) are conflicts, refused unless asked to skip them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg

from . import _validate as check
from ._codec import decode_text, load_json
from ._rows import Opener, messages_from_rows
from ._types import Connection
from .errors import (
    ConvostoreError,
    ImportChecksumMismatch,
    ImportConflict,
    ImportFileError,
    ImportIncomplete,
    InvalidInput,
    SessionNotFound,
)
from .models import Message
from .store import PostgresSessionStore

_PAGE = 500
_MESSAGE_PAGE = 1000
_BATCH = 1000
_MAX_CONFLICTS_KEPT = 1000
_MAX_TOKENS = 2**31 - 1  # an integer column

MAX_IMPORT_SEQ = 2**62
"""The highest seq an import accepts (also for ``last_seq``, ``fork_seq`` and ``cleared_to``):
it leaves a session 2**62 more seqs for appends before its bigint counter (2**63 - 1) runs out."""


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
    verified: bool = False
    """Whether the file ended with its end line and matched it (with ``allow_partial``, a file
    without one is imported unverified)."""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


_KINDS = ("session", "branch", "message")


class ExportTally:
    """What an export's lines so far hold: counts by type and the SHA-256 of their text (each
    line UTF-8 encoded and ended by a newline, as in the file), which its end line states."""

    def __init__(self) -> None:
        self.lines = 0
        self.counts = dict.fromkeys(_KINDS, 0)
        self._digest = hashlib.sha256()

    @property
    def sessions(self) -> int:
        """Session lines so far."""
        return self.counts["session"]

    @property
    def messages(self) -> int:
        """Message lines so far."""
        return self.counts["message"]

    def add(self, kind: str, line: str) -> None:
        """Count *line* (without its newline) of type *kind*."""
        self.lines += 1
        self.counts[kind] += 1
        self._digest.update(line.encode("utf-8", "surrogatepass"))  # a line given as str may hold any
        self._digest.update(b"\n")

    def end(self) -> dict[str, Any]:
        """The end line's fields for the lines so far."""
        return {
            "type": "end",
            "lines": self.lines,
            "sessions": self.counts["session"],
            "branches": self.counts["branch"],
            "messages": self.counts["message"],
            "sha256": self._digest.hexdigest(),
        }


async def export_jsonl(
    store: PostgresSessionStore,
    *,
    user_id: str | None = None,
    session_id: str | None = None,
    all_tenants: bool = False,
    tally: ExportTally | None = None,
) -> AsyncGenerator[str, None]:
    """Yield the export of the store's tenant (of every tenant with *all_tenants*), one JSON
    line (without newline) at a time; in a user view, only that user's sessions. The last
    line is the end line (counts and checksum of the lines before it), which
    :func:`import_jsonl` checks.

    Reads sessions page by page and each session's messages in pages by ``seq``, every page
    one retried statement, so memory stays flat however large the export. An unknown
    *session_id* raises :class:`~convostore.errors.SessionNotFound`. The export is recorded
    in the audit trail once it has been read to the end. *tally*, if given, is kept up to
    date with what was yielded (to say how far an interrupted export got).
    """
    tally = ExportTally() if tally is None else tally
    async for kind, line in _export_lines(store, user_id, session_id, all_tenants):
        tally.add(kind, line)
        yield line
    yield _dumps(tally.end())


async def _export_lines(
    store: PostgresSessionStore, user_id: str | None, session_id: str | None, all_tenants: bool
) -> AsyncGenerator[tuple[str, str], None]:
    """The export's lines but the end line, each with its type."""
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
            yield (
                "session",
                _dumps(
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
                ),
            )
            branches = await runner.run(
                "export", _fetch(q.branch_rows, s["tenant_id"], s["id"]), session_id=s["id"], scope=scope
            )
            for b in sorted(branches, key=lambda b: (b["created_at"], b["name"])):
                yield (
                    "branch",
                    _dumps(
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
                    ),
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
                    yield (
                        "message",
                        _dumps(
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
                        ),
                    )
                if len(messages) < _MESSAGE_PAGE:
                    break
                seq = messages[-1]["seq"]
        if len(page) < _PAGE:
            break
        after = (page[-1]["tenant_id"], page[-1]["id"])
    details = {"user_id": uid, "session_id": sid}
    await store.audit("export", rows=exported, all_tenants=all_tenants, details=details)


async def write_export(
    store: PostgresSessionStore,
    path: str | os.PathLike[str],
    *,
    user_id: str | None = None,
    session_id: str | None = None,
    all_tenants: bool = False,
    tally: ExportTally | None = None,
) -> ExportTally:
    """Write :func:`export_jsonl`'s lines to the file *path*, atomically, and return their tally.

    The lines go to a temporary file beside *path* (readable by its owner only), which is
    synced and renamed to *path* once the end line is written: whatever stops the export
    (an error, a cancellation, Ctrl-C), *path* is left as it was and the temporary file is
    removed. File errors are raised as ``OSError`` naming *path*.
    """
    target = Path(path)
    tally = ExportTally() if tally is None else tally
    with _file_errors(target):
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    done = False
    try:
        # Buffered writes to a local file, between statements that take far longer: not worth
        # a thread per line.
        with open(fd, "w", encoding="utf-8", newline="\n") as f:  # noqa: ASYNC230
            async for line in export_jsonl(
                store, user_id=user_id, session_id=session_id, all_tenants=all_tenants, tally=tally
            ):
                with _file_errors(target):
                    f.write(line + "\n")
            with _file_errors(target):
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
        with _file_errors(target):
            os.replace(name, target)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
    with contextlib.suppress(OSError):  # best effort: the rename itself outlives a crash
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return tally


@contextlib.contextmanager
def _file_errors(target: Path) -> Iterator[None]:
    """Name the file asked for in an ``OSError``, not the temporary file written first."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.fspath(target)) from exc


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
    try:  # stored in UTC: a time that leaves the calendar there could never be read back
        parsed.astimezone(UTC)
    except OverflowError as exc:
        raise ImportFileError(line, f"{field} is outside the years 1-9999 in UTC: {value!r}") from exc
    return parsed


def _int(value: Any, line: int, field: str, low: int = 0, high: int = MAX_IMPORT_SEQ) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ImportFileError(line, f"{field} must be an integer")
    if not low <= value <= high:
        raise ImportFileError(line, f"{field} must be between {low} and {high}, got {value}")
    return value


def _reason(exc: ConvostoreError) -> str:
    """An append check's message for an import line: the checks name a message by its place
    in a batch ("message 0"), the import error names its line."""
    return re.sub(r"^message 0\b", "message", str(exc))


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
    """A message line as an import row, checked by the rules every append is checked by
    (:func:`convostore._validate.message_row`), plus what only an import carries."""
    try:
        sid = check.identifier(obj.get("session_id"), "session_id")
        mid = check.identifier(obj.get("id"), "id")  # kept: an append would generate one
        fields = {name: obj.get(name) for name in ("role", "content", "tool_calls", "tool_call_id", "raw")}
        checked = check.message_row({**fields, "id": mid})
        _, role, content, calls_text, tool_call_id, raw_text, _, _, counted, kind = checked
        branch = check.identifier(obj.get("branch", "main"), "branch")
    except ConvostoreError as exc:
        raise ImportFileError(line, _reason(exc)) from exc
    seq = _int(obj.get("seq"), line, "seq", low=1)  # export reads seqs after 0
    covers = obj.get("covers")
    if covers is not None:
        if not isinstance(covers, list) or len(covers) != 2:
            raise ImportFileError(line, "covers must be [first, last] or null")
        first, last = _int(covers[0], line, "covers[0]", low=1), _int(covers[1], line, "covers[1]", low=1)
        if not first <= last < seq:
            raise ImportFileError(line, "covers must be a range of seqs before the summary's own")
        covers = (first, last)
    tokens = obj.get("tokens")  # absent: counted as an append counts it
    tokens = counted if tokens is None else _int(tokens, line, "tokens", high=_MAX_TOKENS)
    created_at = _time(obj.get("created_at"), line, "created_at")
    return (sid, seq, mid, role, content, calls_text, tool_call_id, raw_text, created_at, branch, covers, tokens, kind)


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
        lines = [line for line, _ in (*sessions, *branches, *messages)]
        if not lines:
            return
        # Every line was checked before: a refusal here is a concurrent writer, or a rule the
        # checks miss. Either way the error names the lines of the batch it came from.
        where = f"lines {min(lines)}-{max(lines)}"
        try:
            if sessions:
                await self._sessions(conn, q, sessions)
            if branches:
                await self._branches(conn, q, branches)
            if messages:
                await self._messages(conn, q, messages)
        except asyncpg.UniqueViolationError as exc:
            reason = f"{where}: a session or message was written by someone else during the import; run it again"
            raise ImportConflict([(min(lines), reason)]) from exc
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise ImportFileError(min(lines), f"{where}: the database refused a row: {exc}") from exc

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

    def report(self, verified: bool) -> ImportReport:
        return ImportReport(**self.counts, conflicts=tuple(self.conflicts), verified=verified)


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
    allow_partial: bool = False,
) -> ImportReport:
    """Import an export (see the module docstring) in one transaction.

    The file must end with the end line its export writes last, and the lines before it must
    match that line's counts and SHA-256: a file without it raises
    :class:`~convostore.errors.ImportIncomplete` (an export cut short), one that disagrees
    with it :class:`~convostore.errors.ImportChecksumMismatch` (changed after export), and
    nothing is written. With *allow_partial*, a file without an end line is imported as far
    as it goes (an end line present is still checked).

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
    async with store._scope.runner.transaction("import", scope=store.scope()) as conn:
        verified = await _read(state, lines, on_line, conn, q, allow_partial)
        if state.strict and state.conflicts_seen:
            raise ImportConflict(state.conflicts)
        report = state.report(verified)
        details = {
            "sessions": report.sessions_added,
            "messages": report.messages_added,
            "conflicts": len(report.conflicts),
        }
        await conn.execute(q.audit, *store._scope.audit_args("import", rows=report.messages_added, details=details))
    return report


def _with_last(lines: Iterable[str]) -> Iterator[tuple[int, str, bool]]:
    """*lines* numbered from 1, each with whether it is the last one."""
    it = iter(lines)
    previous = next(it, None)
    number = 1
    for text in it:
        assert previous is not None
        yield number, previous, False
        previous, number = text, number + 1
    if previous is not None:
        yield number, previous, True


async def _read(
    state: _Import,
    lines: Iterable[str],
    on_line: Callable[[int], None] | None,
    conn: Connection,
    q: Any,
    allow_partial: bool,
) -> bool:
    """Read *lines*, validating each and flushing every ``_BATCH`` rows through *state*; check
    the end line. Returns whether there was one."""
    declared: dict[str, set[str]] = {}  # the sessions read so far, with the branches they declared
    tally = ExportTally()
    end: int | None = None  # the end line's number, once read
    number = 0
    for number, text, last in _with_last(lines):
        if on_line is not None:
            on_line(number)
        if not text.strip():
            continue
        if end is not None:
            raise ImportFileError(number, f"a line after the end line (line {end}); import one export at a time")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            reason = f"not valid JSON ({exc.msg} at column {exc.colno})"
            if last:  # what an export cut short in the middle of a line leaves
                raise ImportIncomplete(number, f"{reason}: the file ends inside this line, cut short") from exc
            raise ImportFileError(number, reason) from exc
        if not isinstance(obj, dict):
            raise ImportFileError(number, "each line must be a JSON object")
        kind = obj.get("type")
        if kind == "end":
            _check_end(obj, tally, number)
            end = number
            continue
        if kind == "session":
            row = _session_row(obj, number)
            declared.setdefault(row[0], {"main"})
            state.counts["sessions_read"] += 1
            tenant = obj.get("tenant_id", state.tenant)
            if tenant != state.tenant:  # a store imports into its own tenant only
                state.refused.add(row[0])
                state.conflict(number, f"session {row[0]!r} is of tenant {tenant!r}; importing into {state.tenant!r}")
            else:
                state.sessions.append((number, row))
        elif kind == "branch":
            row = _branch_row(obj, number)
            names = declared.get(row[0])
            if names is None:
                raise ImportFileError(number, f"branch of session {row[0]!r}, whose line does not come first")
            if row[2] is not None and row[2] not in names:  # as a fork needs its parent
                raise ImportFileError(number, f"branch {row[1]!r} forks {row[2]!r}, which session {row[0]!r} lacks")
            names.add(row[1])
            state.branches.append((number, row))
        elif kind == "message":
            row = _message_row(obj, number)
            names = declared.get(row[0])
            if names is None:
                raise ImportFileError(number, f"message for session {row[0]!r}, whose line does not come first")
            if row[9] not in names:  # as an append to a branch the session does not have
                raise ImportFileError(number, f"message on branch {row[9]!r}, which session {row[0]!r} lacks")
            state.messages.append((number, row))
            state.counts["messages_read"] += 1
        else:
            expected = "'session', 'branch', 'message' or 'end'"
            raise ImportFileError(number, f"unknown line type {kind!r} (expected {expected})")
        tally.add(kind, text.rstrip("\r\n"))
        if len(state.sessions) + len(state.branches) + len(state.messages) >= _BATCH:
            await state.flush(conn, q)
    if end is None and not allow_partial:
        where = f"after line {number}" if number else "in an empty file"
        raise ImportIncomplete(
            number + 1,
            f"no end line {where}: the export was cut short, or comes from a convostore that wrote none"
            " (allow_partial, or --allow-partial, imports it as it is)",
        )
    await state.flush(conn, q)
    return end is not None


def _check_end(obj: dict[str, Any], tally: ExportTally, number: int) -> None:
    """Refuse an end line that disagrees with the lines before it."""
    found = tally.end()
    wrong = [key for key in found if key != "type" and obj.get(key) != found[key]]
    if not wrong:
        return
    counts = [f"{key} {obj.get(key)!r} (the file has {found[key]})" for key in wrong if key != "sha256"]
    said = "; ".join(counts) if counts else "its SHA-256"
    raise ImportChecksumMismatch(
        number, f"the end line does not match lines 1-{number - 1}: {said}; the file was changed after export"
    )
