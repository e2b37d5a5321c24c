"""How the browser shows a conversation: messages turned into what a page lays out.

Pure functions over :class:`~convostore.models.Message` (no I/O, no HTML): tool calls are
paired with their outputs by call id, reasoning items, framework items and compaction
summaries are recognised, long content is flagged for folding. The templates do the rest,
with autoescaping: nothing here is ever marked safe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..models import Message

LONG_CHARS = 1200  # content longer than this (or than LONG_LINES lines) is folded
LONG_LINES = 18
EMPTY_SUMMARY = "convostore.empty_summary"


@dataclass(slots=True)
class Call:
    """A tool call, shown beside its output."""

    id: str
    name: str
    arguments: str
    output: Message | None = None
    output_text: str = ""
    output_long: bool = False


@dataclass(slots=True)
class Entry:
    """One message as the page shows it. *kind*: ``message``, ``reasoning``, ``item``,
    ``output`` (a tool output whose call is not on the page) or ``removed`` (a compaction
    that replaced messages with nothing)."""

    message: Message
    kind: str
    text: str
    long: bool = False
    calls: list[Call] = field(default_factory=list)
    item_type: str | None = None
    raw_json: str | None = None
    replaced_by: int | None = None


def pretty(text: str) -> str:
    """*text* re-indented if it is JSON (tool arguments and outputs usually are), else as is."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.dumps(json.loads(stripped), indent=2, ensure_ascii=False)
        except ValueError:
            pass
    return text


def is_long(text: str) -> bool:
    """Whether *text* is folded until the reader unfolds it."""
    return len(text) > LONG_CHARS or text.count("\n") >= LONG_LINES


def _raw_type(message: Message) -> str | None:
    raw = message.raw
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    return kind if isinstance(kind, str) else None


def _call(call: Any, message: Message) -> Call | None:
    if not isinstance(call, Mapping) or not isinstance(call.get("id"), str):
        return None
    function = call.get("function")
    if isinstance(function, Mapping):
        name = function.get("name")
        arguments = function.get("arguments")
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return Call(call["id"], str(name) if name is not None else "function", pretty(text or ""))
    # A framework's other call items (shell, computer, MCP ...): the item is the call.
    kind = call.get("type")
    shown = message.raw if message.raw is not None else call
    return Call(call["id"], str(kind) if kind else "call", json.dumps(shown, indent=2, ensure_ascii=False))


def _replacements(messages: Sequence[Message]) -> dict[int, int]:
    """seq of each message a summary replaces -> seq of the latest summary replacing it."""
    replaced: dict[int, int] = {}
    for summary in messages:
        if summary.covers is None:
            continue
        first, last = summary.covers
        for m in messages:
            if m.seq != summary.seq and first <= m.seq <= last:
                replaced[m.seq] = max(replaced.get(m.seq, 0), summary.seq)
    return replaced


def entries(messages: Sequence[Message]) -> list[Entry]:
    """The page's entries for *messages* (oldest first): a call's output is shown with the
    call (parallel calls included) and not again on its own."""
    pending: dict[str, Call] = {}  # calls seen, waiting for their output
    paired: set[int] = set()  # seqs of outputs shown with their call
    built: list[tuple[Message, list[Call]]] = []
    for m in messages:
        calls = [c for c in (_call(call, m) for call in m.tool_calls or ()) if c is not None]
        for c in calls:
            pending[c.id] = c
        if m.role == "tool" and m.tool_call_id is not None:
            waiting = pending.pop(m.tool_call_id, None)
            if waiting is not None:
                waiting.output = m
                waiting.output_text = pretty(m.content)
                waiting.output_long = is_long(waiting.output_text)
                paired.add(m.seq)
        built.append((m, calls))
    replaced = _replacements(messages)
    out = []
    for m, calls in built:
        if m.seq in paired:
            continue
        kind, item_type = _kind(m)
        raw_json = None
        if kind == "item" or (m.raw is not None and not m.content and not calls):
            raw_json = json.dumps(m.raw, indent=2, ensure_ascii=False)
        text = pretty(m.content) if m.role == "tool" else m.content
        out.append(
            Entry(
                m,
                kind,
                text,
                long=is_long(text),
                calls=calls,
                item_type=item_type,
                raw_json=raw_json,
                replaced_by=replaced.get(m.seq),
            )
        )
    return out


def _kind(m: Message) -> tuple[str, str | None]:
    kind = _raw_type(m)
    if kind == EMPTY_SUMMARY:
        return "removed", kind
    if kind == "reasoning":
        return "reasoning", kind
    if m.role == "item":
        return "item", kind
    if m.role == "tool":
        return "output", kind
    if kind not in (None, "message") and not m.content and not m.tool_calls:
        return "item", kind  # a framework's item without text: compaction, item_reference ...
    return "message", kind


def title_of(metadata: Mapping[str, Any], fallback: str) -> str:
    """A session's title: its metadata's ``title`` if it has a textual one, else *fallback*."""
    title = metadata.get("title")
    return title.strip() if isinstance(title, str) and title.strip() else fallback


def utc_text(value: datetime | None) -> str:
    """A time as shown before the browser's script puts it in the reader's time zone."""
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
