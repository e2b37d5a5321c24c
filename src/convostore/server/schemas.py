"""The API's request and response bodies: pydantic models with strict types and size limits.

Request models state the store's own rules (what an id may hold, which role needs which
field) in their JSON Schema, so that a request the OpenAPI document calls valid is one the
store accepts, and the reverse.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, StringConstraints, model_validator
from starlette.convertors import Convertor, register_url_convertor

from ..models import HIT_END, HIT_START, Branch, Message, SearchHit, Session, UsageTotal

# -- what ids may hold (convostore._validate, as regular expressions) ------------------------

# No C0/C1 control character or DEL anywhere.
_C = r"[^\x00-\x1f\x7f-\x9f]"
# Whitespace as Python's str.isspace() sees it, spelled out so that every regex engine (the
# server's, a client's, the OpenAPI tooling's) agrees with the store's "not blank" test.
_SPACE = r"\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\t-\r"
# A character that makes an id non-blank: neither a control character nor whitespace.
_SOLID = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_SOLID_NOT_STAR = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000*]"

ID_PATTERN = rf"^{_C}*{_SOLID}{_C}*$"
"""An id (session, message, agent, branch, tool call): not blank, no control characters."""
NAME_PATTERN = rf"^(?:{_C}*{_SOLID_NOT_STAR}{_C}*|{_C}+\*{_C}*|{_C}*\*{_C}+)$"
"""A user or tenant id: an id other than ``*`` (which row-level security reads as "everyone")."""
NON_BLANK_PATTERN = rf"^[\s\S]*[^{_SPACE}][\s\S]*$"
"""Text with at least one character that is not whitespace (a tool call's id, a query)."""

MAX_ID = 255
# The highest seq a request names (a session holds fewer than 2**62, the import's bound): a
# number a double holds exactly and writes out exactly (1e18), so that a client that sends
# seqs as floats and the server agree on where the bound is.
MAX_SEQ = 10**18
MAX_WINDOW = 2**62  # turns or tokens of a window (the store's limit)


class _Segment(Convertor[str]):
    """``{name:text}`` in a route: one path segment, percent-decoded. The application routes
    on the path as sent (see :class:`.middleware.SegmentPaths`), so an id holding ``/``
    (``%2F``), ``%`` or a line break is one segment and reaches its handler whole, where a
    malformed one is refused with a 400; it is never read as more of the route."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        # Valid UTF-8 by now: SegmentPaths refuses any other path.
        return unquote(value, errors="strict")

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


register_url_convertor("text", _Segment())
MAX_JSON_DEPTH = 100  # nesting levels of a request's JSON (a body, ?metadata=)

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text *data* nests arrays and objects more than *limit* levels deep.

    Checked on the text before it is parsed: Python's decoder, pydantic and the response
    encoder all recurse once per level, so a body nested a few thousand levels deep would
    otherwise end in a RecursionError (a 500) somewhere on the way.
    """
    if data.count(b"[") + data.count(b"{") <= limit:  # the common case, at C speed
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def too_deep_issue(*loc: str) -> dict[str, Any]:
    """The validation issue of JSON nested deeper than :data:`MAX_JSON_DEPTH`."""
    return {"loc": loc, "msg": f"JSON nested more than {MAX_JSON_DEPTH} levels deep", "type": "json_too_deep"}


MAX_CONTENT = 1_000_000  # characters of one message's content
MAX_MESSAGES = 1000  # messages in one append
MAX_TOOL_CALLS = 128
MAX_METADATA_KEYS = 64
MAX_DURATION = 36_525 * 86_400.0  # the store's limit: 100 years, in seconds
MAX_EXPECT = 100_000  # seqs a compaction may expect to find

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)]
ScopeName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID, pattern=NAME_PATTERN)]


def _integral(value: object) -> object:
    # JSON Schema counts 5.0 as an integer, as JSON does; pydantic's strict mode would not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Seq = Annotated[int, Field(ge=0, le=MAX_SEQ), BeforeValidator(_integral)]
"""A message's seq in a body (0: before the first)."""
Seconds = Annotated[
    float,
    # At least a millisecond: the store counts in microseconds and refuses a duration of zero.
    Field(ge=0.001, le=MAX_DURATION, description="Seconds, at least 0.001 and at most 100 years."),
]
NonNullJson = dict[str, JsonValue] | list[JsonValue] | str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ToolCall(BaseModel):
    """A tool call as the model made it; ``id`` pairs it with its output (a ``tool`` message's
    ``tool_call_id``). Other fields (``type``, ``function``) are kept as sent."""

    model_config = ConfigDict(strict=True, extra="allow")

    id: Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=NON_BLANK_PATTERN)]


class _MessageBase(_Strict):
    id: Identifier | None = Field(
        default=None, description="The client's id for the message: resending it makes the append idempotent."
    )
    content: Annotated[str, Field(max_length=MAX_CONTENT)]
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOL_CALLS)] | None = None
    raw: JsonValue = Field(default=None, description="A framework's original item, kept verbatim.")


class ChatMessageIn(_MessageBase):
    """A message of the system, developer, user or assistant."""

    role: Literal["system", "developer", "user", "assistant"]


class ToolMessageIn(_MessageBase):
    """A tool's output: ``tool_call_id`` names the call it answers."""

    role: Literal["tool"]
    tool_call_id: Identifier


class ItemMessageIn(_MessageBase):
    """A framework's item that is no message, kept in ``raw`` (which is required)."""

    role: Literal["item"]
    content: Annotated[str, Field(max_length=MAX_CONTENT)] = ""
    raw: NonNullJson = Field(description="The item itself.")


MessageIn = Annotated[ChatMessageIn | ToolMessageIn | ItemMessageIn, Field(discriminator="role")]


class AppendIn(_Strict):
    """Messages to append to a session, atomically."""

    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=MAX_MESSAGES)]
    user_id: ScopeName | None = Field(
        default=None,
        description="Create the session on first write, owned by this user; refuse another user's session.",
    )
    agent_name: Identifier | None = Field(default=None, description="The agent of a session created by this write.")
    branch: Identifier = Field(default="main", description="The branch written to.")


class SessionIn(_Strict):
    """A session to create. ``ttl`` (a sliding expiry) and ``expires_in`` (a fixed one) exclude
    each other."""

    model_config = ConfigDict(
        strict=True, extra="forbid", json_schema_extra={"not": {"required": ["ttl", "expires_in"]}}
    )

    id: Identifier | None = Field(default=None, description="Generated (a UUID) when omitted.")
    user_id: ScopeName | None = Field(default=None, description="The owner; defaults to the key's user.")
    agent_name: Identifier
    metadata: Annotated[dict[str, JsonValue], Field(max_length=MAX_METADATA_KEYS)] = Field(default_factory=dict)
    ttl: Seconds | None = Field(default=None, description="Expire this long after the last activity.")
    expires_in: Seconds | None = Field(default=None, description="Expire this long after creation.")

    @model_validator(mode="after")
    def _one_expiry(self) -> SessionIn:
        if {"ttl", "expires_in"} <= self.model_fields_set:
            raise ValueError("give ttl (a sliding expiry) or expires_in (a fixed one), not both")
        return self


class SessionPatch(_Strict):
    """A change to a session's metadata: its top-level keys are merged into the stored
    metadata (each given key replaces the stored one, a ``null`` included; the others stay)."""

    metadata: Annotated[dict[str, JsonValue], Field(max_length=MAX_METADATA_KEYS)]


class ForkIn(_Strict):
    """A branch to fork: ``parent``'s view up to ``at_seq``, then messages of its own."""

    name: Identifier = Field(
        description="The new branch's name (not `.` or `..`, which no URL can carry as a path segment).",
        json_schema_extra={"not": {"enum": [".", ".."]}},
    )
    parent: Identifier = Field(default="main", description="The branch forked.")
    at_seq: Seq | None = Field(
        default=None,
        description="The last seq of the parent's view the branch shares (a message of that view): "
        "by default its latest message; 0: none of them.",
    )

    @model_validator(mode="after")
    def _addressable(self) -> ForkIn:
        # A branch is deleted at /branches/{name}: a name that is a dot segment could not be.
        if self.name in (".", ".."):
            raise ValueError(f"a branch cannot be named {self.name!r}: no URL can carry it as a path segment")
        return self


class CompactIn(_Strict):
    """A compaction: ``summary`` replaces, in the view of ``branch``, its messages from
    ``from_seq`` on, which stay stored (read them with `raw=true`)."""

    summary: Annotated[list[MessageIn], Field(max_length=MAX_MESSAGES)] = Field(
        description="The summary's messages; none: the messages are replaced with nothing."
    )
    from_seq: Seq | None = Field(default=None, description="The first seq replaced (default: the whole view).")
    expect: Annotated[list[Seq], Field(max_length=MAX_EXPECT)] | None = Field(
        default=None,
        description="The seqs of the view from `from_seq` on that the summary was made from: if the view "
        "holds anything else by then, nothing is written.",
    )
    prune_to: Seq | None = Field(
        default=None, description="Hide the view's messages before `from_seq` up to this seq too."
    )
    branch: Identifier = Field(default="main", description="The branch whose view is compacted.")


# -- responses ------------------------------------------------------------------------------


class MessageOut(BaseModel):
    """A stored message."""

    id: str
    session_id: str
    seq: int = Field(description="Its place in the session: unique, increasing in commit order.")
    role: str
    content: str
    tool_calls: list[Any] | None
    tool_call_id: str | None
    raw: Any = Field(description="The framework's original item, or null.")
    created_at: datetime
    branch: str
    covers: tuple[int, int] | None = Field(
        description="For a compaction summary, the first and last seq of the messages it replaces."
    )

    @classmethod
    def of(cls, m: Message) -> MessageOut:
        """The representation of *m*."""
        return cls(
            id=m.id,
            session_id=m.session_id,
            seq=m.seq,
            role=m.role,
            content=m.content,
            tool_calls=m.tool_calls,
            tool_call_id=m.tool_call_id,
            raw=m.raw,
            created_at=m.created_at,
            branch=m.branch,
            covers=m.covers,
        )


class SessionOut(BaseModel):
    """A session, without its messages."""

    id: str
    user_id: str
    agent_name: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    message_count: int
    expires_at: datetime | None

    @classmethod
    def of(cls, s: Session) -> SessionOut:
        """The representation of *s* (its fields, by name)."""
        return cls.model_validate(s, from_attributes=True)


class SessionPage(BaseModel):
    """A page of sessions, most recently updated first."""

    items: list[SessionOut]
    next: str | None = Field(description="Pass as `before` for the next (older) page; null on the last page.")


class MessagePage(BaseModel):
    """A page of messages, oldest first."""

    items: list[MessageOut]
    next_before: int | None = Field(description="Pass as `before_seq` for the older messages; null if none.")
    next_after: int | None = Field(description="Pass as `after_seq` for the newer messages; null if none.")


class AppendOut(BaseModel):
    """The appended messages as stored (for a retried append: as stored the first time)."""

    items: list[MessageOut]


class CompactOut(BaseModel):
    """What a compaction stored."""

    items: list[MessageOut] | None = Field(
        description="The summary as stored (as stored the first time, for a retry with the same ids); "
        "empty for a summary of nothing; null when nothing was written: the view no longer holds "
        "what `expect` lists, or there was nothing to replace."
    )


class BranchOut(BaseModel):
    """A line of a session's conversation: `main`, or a fork that shares its parent's
    messages up to `fork_seq` and holds messages of its own."""

    name: str
    parent: str | None = Field(description="The branch it was forked from; null for `main`.")
    fork_seq: int | None = Field(description="The last seq of the parent's view it shares; null for `main`.")
    created_at: datetime | None = Field(description="When it was forked; null for `main`.")
    messages: int = Field(description="Its own messages (not those it shares).")

    @classmethod
    def of(cls, b: Branch) -> BranchOut:
        """The representation of *b* (its fields, by name)."""
        return cls.model_validate(b, from_attributes=True)


class BranchPage(BaseModel):
    """A session's branches, `main` first (unless deleted), then by creation."""

    items: list[BranchOut]


class BranchDeletionOut(BaseModel):
    """What deleting a branch removed."""

    session_id: str
    branch: str
    messages: int = Field(description="Messages removed: its own, except those a branch forked from it still shares.")


class SnippetPart(BaseModel):
    """A run of a snippet's text, a hit of the query or not."""

    text: str
    hit: bool


class SearchHitOut(BaseModel):
    """A message matching a search. ``snippet`` is plain text (never HTML); the hits are given
    twice: as ``highlights``, ``[start, end)`` offsets in Unicode code points, and as ``parts``."""

    session_id: str
    seq: int
    message_id: str
    role: str
    branch: str
    user_id: str
    created_at: datetime
    rank: float
    snippet: str
    highlights: list[tuple[int, int]]
    parts: list[SnippetPart]

    @classmethod
    def of(cls, hit: SearchHit) -> SearchHitOut:
        """The representation of *hit*."""
        parts = snippet_parts(hit.snippet)
        highlights, at = [], 0
        for part in parts:
            if part.hit:
                highlights.append((at, at + len(part.text)))
            at += len(part.text)
        return cls(
            session_id=hit.session_id,
            seq=hit.seq,
            message_id=hit.message_id,
            role=hit.role,
            branch=hit.branch,
            user_id=hit.user_id,
            created_at=hit.created_at,
            rank=hit.rank,
            snippet="".join(p.text for p in parts),
            highlights=highlights,
            parts=parts,
        )


class SearchPage(BaseModel):
    """Search hits, best first."""

    items: list[SearchHitOut]
    next_offset: int | None = Field(description="Pass as `offset` for more hits; null when there are no more.")


class UsageOut(BaseModel):
    """Usage summed over the turns of one key (a session, user, agent or UTC day)."""

    key: str
    turns: int
    requests: int
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    duration: float = Field(description="Seconds, over the turns whose duration is known.")

    @classmethod
    def of(cls, u: UsageTotal) -> UsageOut:
        """The representation of *u* (its fields, by name)."""
        return cls.model_validate(u, from_attributes=True)


class UsagePage(BaseModel):
    """Usage totals."""

    items: list[UsageOut]


class ErasureOut(BaseModel):
    """What erasing a user removed."""

    user_id: str
    sessions: int
    messages: int


class Health(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """The database answers and its schema is migrated."""

    status: Literal["ready"]
    migrations: int = Field(description="Migrations applied.")


def snippet_parts(snippet: str) -> list[SnippetPart]:
    """*snippet* split at the store's hit markers into runs of plain text and hits.

    Markers that do not pair up (stored text can hold the private-use marker characters
    too) are dropped rather than trusted, so a hit never runs past the end of the snippet.
    """
    parts: list[SnippetPart] = []
    text, rest = "", snippet
    while rest:
        start = rest.find(HIT_START)
        if start < 0:
            text += rest
            break
        end = rest.find(HIT_END, start + 1)
        if end < 0:
            text += rest.replace(HIT_START, "")
            break
        text += rest[:start].replace(HIT_END, "")
        hit = rest[start + 1 : end].replace(HIT_START, "")
        if text:
            parts.append(SnippetPart(text=text, hit=False))
            text = ""
        if hit:
            parts.append(SnippetPart(text=hit, hit=True))
        rest = rest[end + 1 :]
    text = text.replace(HIT_END, "")
    if text:
        parts.append(SnippetPart(text=text, hit=False))
    return parts
