"""History windows: the part of a conversation a model is given, cut where a model accepts it.

A :class:`Window` asks for the latest turns, or the latest tokens, of a session's view (its
branch, compacted). The database picks the window's rows in the read itself (one round trip);
:func:`fit` then moves the window's start forward to the first place where nothing is cut
apart: no tool output without its call, no reasoning item without the item it precedes.
Token counts are kept per message when it is written (:func:`estimate_tokens` unless the
store is given a counter, such as :func:`tiktoken_counter`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, InvalidInput
from .models import Message

TokenCounter = Callable[[str], int]
"""Counts the tokens of a message's text (its raw item as JSON, else its content and tool calls)."""

PINNED_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Window:
    """Which part of a session's view a model is given.

    *turns*: the latest *turns* turns (a turn starts at a user message). *tokens*: at most
    *tokens* tokens, newest first. Both: the latest turns that fit. Neither: the whole view.
    With *pinned* (the default), the view's system and developer messages before the window
    are kept too, and their tokens counted first. The start then moves forward to where no
    call is parted from its output nor a reasoning item from what it precedes, so a window
    may hold fewer messages than asked for, never more.
    """

    turns: int | None = None
    tokens: int | None = None
    pinned: bool = True

    def __post_init__(self) -> None:
        for name in ("turns", "tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidInput(f"Window.{name} must be a non-negative int or None, not {value!r}")
            if value is not None and value > 2**62:
                raise InvalidInput(f"Window.{name} is too large: {value}")
        if not isinstance(self.pinned, bool):
            raise InvalidInput(f"Window.pinned must be a bool, not {type(self.pinned).__name__}")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: about four characters per token, at least one."""
    return len(text) // 4 + 1


def tiktoken_counter(encoding: Any = "o200k_base") -> TokenCounter:
    """A counter backed by tiktoken (``pip install 'convostore[tokens]'``): *encoding* is an
    encoding's name (fetched and cached by tiktoken; see its ``TIKTOKEN_CACHE_DIR``) or a
    ``tiktoken.Encoding``. Special-token text in messages is counted as plain text."""
    try:
        import tiktoken
    except ImportError as exc:
        raise ConfigurationError("counting tokens with tiktoken needs: pip install 'convostore[tokens]'") from exc
    enc = tiktoken.get_encoding(encoding) if isinstance(encoding, str) else encoding
    if not isinstance(enc, tiktoken.Encoding):
        raise ConfigurationError(f"encoding must be a name or a tiktoken.Encoding, not {type(enc).__name__}")

    def count(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))

    return count


def _calls(message: Message) -> list[str]:
    return [c["id"] for c in message.tool_calls or () if isinstance(c, Mapping) and isinstance(c.get("id"), str)]


def _is_reasoning(message: Message) -> bool:
    raw = message.raw
    return isinstance(raw, Mapping) and raw.get("type") == "reasoning"


def safe_start(messages: Sequence[Message]) -> int:
    """The first index at which *messages* can start without parting a call from its output
    (an output whose call is not after the start, parallel calls included) or a reasoning
    item from the item after it; ``len(messages)`` if none can."""
    # Most windows can start at their first message: every output's call comes before it.
    called: set[str] = set()
    for message in messages:
        if message.tool_call_id is not None and message.tool_call_id not in called:
            break
        if message.tool_calls:
            called.update(_calls(message))
    else:
        return 0
    n = len(messages)
    # blocked[k]: starting at k would cut something apart (a difference array of intervals).
    delta = [0] * (n + 2)
    latest_call: dict[str, int] = {}
    for j, message in enumerate(messages):
        answered = message.tool_call_id
        if answered is not None:
            c = latest_call.get(answered)
            first = 0 if c is None else c + 1  # the call is before the window: start after j
            delta[first] += 1
            delta[j + 1] -= 1
        for call_id in _calls(message):
            latest_call[call_id] = j
        if _is_reasoning(message) and j + 1 <= n:
            delta[j + 1] += 1
            delta[j + 2] -= 1
    blocked = 0
    for k in range(n):
        blocked += delta[k]
        if blocked == 0:
            return k
    return n


def fit(messages: Sequence[Message], *, pinned: bool = True) -> list[Message]:
    """The window *messages* (oldest first, as the database chose them) cut at its
    :func:`safe_start`, keeping the system and developer messages before it if *pinned*."""
    k = safe_start(messages)
    if k == 0:
        return list(messages)
    kept = [m for m in messages[:k] if m.role in PINNED_ROLES] if pinned else []
    return kept + list(messages[k:])
