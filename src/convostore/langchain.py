"""``PostgresChatMessageHistory``: LangChain's chat message history on a convostore store.

``pip install 'convostore[langchain]'``. A thin adapter: each LangChain message is one stored
message, kept whole in ``raw`` (``message_to_dict``) and projected onto the columns (role,
text, tool calls, the tool call answered) so that the CLI, the browser, search and the other
frameworks' adapters read it too. Reading gives back the very message written; a message
written by another framework is read as the nearest LangChain message.

The async methods (``aget_messages``, ``aadd_messages``, ``aclear``) use the store directly;
the sync ones (``messages``, ``add_messages``, ``clear``) go through one
:class:`~convostore.SyncSessionStore` per store, shared by its histories.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)

from . import _validate as check
from .errors import InvalidInput, InvalidMessageType
from .models import ROLES, Message, NewMessage
from .store import PostgresSessionStore
from .sync import SyncSessionStore
from .windows import Window, fit

__all__ = ["PostgresChatMessageHistory"]

_ROLE_OF = {"human": "user", "ai": "assistant", "tool": "tool", "system": "system"}
_facades: weakref.WeakKeyDictionary[PostgresSessionStore, SyncSessionStore] = weakref.WeakKeyDictionary()
_facades_lock = threading.Lock()


def _facade(store: PostgresSessionStore) -> SyncSessionStore:
    """The synchronous facade of *store*, one per store (its own loop thread)."""
    with _facades_lock:
        facade = _facades.get(store)
        if facade is None:
            facade = _facades[store] = SyncSessionStore(store=store)
        return facade


def to_new_message(message: BaseMessage) -> NewMessage:
    """A LangChain message as the message convostore stores (kept whole in ``raw``)."""
    if not isinstance(message, BaseMessage):
        raise InvalidMessageType(f"expected a LangChain BaseMessage, not {type(message).__name__}")
    raw = message_to_dict(message)
    text = message.text if isinstance(message.text, str) else str(message.text)
    calls: list[dict[str, Any]] | None = None
    answered: str | None = None
    if isinstance(message, ToolMessage):
        role = "tool"
        answered = message.tool_call_id
    elif isinstance(message, ChatMessage):
        role = message.role if message.role in ROLES and message.role != "tool" else "item"
    else:
        role = _ROLE_OF.get(message.type, "item")
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["args"])},
            }
            for call in message.tool_calls
            if call.get("id")
        ] or None
    message_id = message.id if isinstance(message.id, str) and message.id.strip() else None
    return NewMessage(role, text, calls, answered, message_id, raw)


def to_langchain(message: Message) -> BaseMessage | None:
    """A stored message as a LangChain message: the one written, if LangChain wrote it; else
    the nearest one (``None`` for an item with no text, another framework's own kind)."""
    raw = message.raw
    if isinstance(raw, Mapping) and set(raw) == {"type", "data"} and isinstance(raw.get("data"), Mapping):
        return messages_from_dict([dict(raw)])[0]
    if message.role == "user":
        return HumanMessage(content=message.content, id=message.id)
    if message.role in ("system", "developer"):
        return SystemMessage(content=message.content, id=message.id)
    if message.role == "tool":
        return ToolMessage(content=message.content, tool_call_id=message.tool_call_id or "", id=message.id)
    if message.role == "assistant":
        calls = []
        for call in message.tool_calls or []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                try:
                    args = json.loads(function.get("arguments") or "{}")
                except (TypeError, ValueError):
                    args = {"arguments": function.get("arguments")}
                calls.append(
                    {
                        "name": function.get("name") or "",
                        "args": args if isinstance(args, dict) else {},
                        "id": call.get("id"),
                    }
                )
        if not message.content and not calls:
            return None  # a reasoning item, say: nothing a LangChain model reads
        return AIMessage(content=message.content, tool_calls=calls, id=message.id)
    return None


class PostgresChatMessageHistory(BaseChatMessageHistory):
    """A LangChain ``BaseChatMessageHistory`` kept in convostore.

    The conversation is session *session_id* of *store* (a :class:`PostgresSessionStore`,
    or a :class:`SyncSessionStore`), owned by *user_id* (default ``"default"``, or the user
    of a store view) for *agent_name*, created on first write. ``messages`` are the latest
    *limit* (all if ``None``), or the *window* (:class:`~convostore.Window`: turns or tokens),
    started where no tool call is parted from its output. ``add_messages`` is one atomic
    append; a message's LangChain ``id``, when set, is its id in the store, so adding it
    again is recognised and not stored twice.
    """

    def __init__(
        self,
        session_id: str,
        *,
        store: PostgresSessionStore | SyncSessionStore,
        user_id: str | None = None,
        agent_name: str = "langchain",
        limit: int | None = None,
        window: Window | None = None,
        branch: str = "main",
    ) -> None:
        self.store = store.store if isinstance(store, SyncSessionStore) else store
        if not isinstance(self.store, PostgresSessionStore):
            raise InvalidInput(f"store must be a PostgresSessionStore or SyncSessionStore, not {type(store).__name__}")
        self._sync = store if isinstance(store, SyncSessionStore) else None
        self.session_id = check.identifier(session_id, "session_id")
        self.user_id = self.store.acting_user(user_id) or "default"
        self.agent_name = check.identifier(agent_name, "agent_name")
        self.limit = check.limit(limit)
        if window is not None and not isinstance(window, Window):
            raise InvalidInput(f"window must be a Window, not {type(window).__name__}")
        if window is not None and limit is not None:
            raise InvalidInput("give a limit or a window, not both")
        self.window = window
        self.branch = check.identifier(branch, "branch")

    def _facade(self) -> SyncSessionStore:
        return self._sync if self._sync is not None else _facade(self.store)

    def _read(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "branch": self.branch, "limit": self.limit, "window": self.window}

    def _convert(self, stored: list[Message]) -> list[BaseMessage]:
        if self.limit is not None:
            stored = fit(stored)
        return [m for m in (to_langchain(s) for s in stored) if m is not None]

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The conversation's messages, oldest first (see the class docstring)."""
        return self._convert(self._facade().get_messages(self.session_id, **self._read()))

    async def aget_messages(self) -> list[BaseMessage]:
        """The conversation's messages, oldest first (see the class docstring)."""
        return self._convert(await self.store.get_messages(self.session_id, **self._read()))

    def _rows(self, messages: Sequence[BaseMessage]) -> list[NewMessage]:
        if isinstance(messages, (str, bytes, BaseMessage)) or not isinstance(messages, Sequence):
            raise InvalidMessageType("messages must be a sequence of LangChain messages")
        return [to_new_message(m) for m in messages]

    def _write(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "agent_name": self.agent_name, "branch": self.branch}

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append *messages* in one atomic append."""
        rows = self._rows(messages)
        if rows:
            self._facade().add_messages(self.session_id, rows, **self._write())

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append *messages* in one atomic append."""
        rows = self._rows(messages)
        if rows:
            await self.store.add_messages(self.session_id, rows, **self._write())

    def clear(self) -> None:
        """Delete the conversation's messages (the session and its metadata stay)."""
        self._facade().clear_session(self.session_id, user_id=self.user_id, branch=self.branch)

    async def aclear(self) -> None:
        """Delete the conversation's messages (the session and its metadata stay)."""
        await self.store.clear_session(self.session_id, user_id=self.user_id, branch=self.branch)
