"""``PostgresSession``: the Agents SDK ``Session`` protocol on a :class:`PostgresSessionStore`."""

from __future__ import annotations

from typing import Any, cast

from agents.items import TResponseInputItem
from agents.memory.session_settings import SessionSettings, resolve_session_limit

from .. import _validate as check
from .._codec import load_json
from .._rows import messages_from_rows
from ..errors import InvalidMessage
from ..store import PostgresSessionStore
from ._items import drop_orphan_outputs, to_items, to_message


class PostgresSession:
    """Conversation history for ``Runner.run(agent, input, session=...)``.

    Satisfies ``agents.memory.Session`` structurally. Many sessions share one store (and
    its pool). The session row is created on first write, owned by *user_id*, for
    *agent_name*; a session id that belongs to another user raises
    :class:`~convostore.errors.SessionOwnershipError` instead of showing its history.

    ``add_items`` is one atomic round trip, and the items of one call stay contiguous even
    when several runs write the same session at once. (The SDK saves a run's input, then
    each model step's items, a call each; a tool call and its output come in one call, so
    they are never split, while two concurrent runs interleave between calls.)
    ``get_items(limit)`` reads the latest items through the primary key in one query and
    drops tool outputs whose call fell outside the window.
    """

    def __init__(
        self,
        session_id: str,
        *,
        store: PostgresSessionStore,
        user_id: str = "default",
        agent_name: str = "agent",
        session_settings: SessionSettings | None = None,
    ) -> None:
        self.session_id: str = check.identifier(session_id, "session_id")
        self.user_id = check.identifier(user_id, "user_id")
        self.agent_name = check.identifier(agent_name, "agent_name")
        self.store = store
        self.session_settings: SessionSettings | None = session_settings or SessionSettings()

    def __repr__(self) -> str:
        return f"PostgresSession({self.session_id!r}, user_id={self.user_id!r}, agent_name={self.agent_name!r})"

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> list[TResponseInputItem]:
        """The latest *limit* items (default: ``session_settings.limit``, else all), oldest first."""
        effective = resolve_session_limit(limit, self.session_settings)
        rows = await self.store._owned_rows(self.session_id, check.limit(effective), None, self.user_id)
        # Items written through the SDK are their raw column; only messages written with the
        # store API need rebuilding from the projected columns.
        items: list[Any] = []
        for row in rows:
            raw = row[6]
            if raw is not None:
                items.append(load_json(raw))
            else:
                items.extend(to_items(messages_from_rows([row], self.session_id)[0]))
        if effective is not None:
            items = drop_orphan_outputs(items)
        return items

    async def add_items(self, items: list[TResponseInputItem], *, wrapper: Any = None) -> None:
        """Append *items* in order, atomically, in one statement."""
        if not items:
            return
        try:
            messages = [to_message(item) for item in items]
        except TypeError as exc:
            raise InvalidMessage(str(exc)) from exc
        await self.store.add_messages(self.session_id, messages, user_id=self.user_id, agent_name=self.agent_name)

    async def pop_item(self, *, wrapper: Any = None) -> TResponseInputItem | None:
        """Remove and return the newest item (each item is popped once under concurrency)."""
        message = await self.store.pop_message(self.session_id, user_id=self.user_id)
        if message is None:
            return None
        return cast(TResponseInputItem, to_items(message)[-1])

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Delete every item of this session (the session row and its metadata stay)."""
        await self.store.clear_session(self.session_id, user_id=self.user_id)
