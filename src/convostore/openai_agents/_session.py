"""``PostgresSession``: the Agents SDK ``Session`` protocol on a :class:`PostgresSessionStore`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import threading
from collections.abc import Mapping
from typing import Any, cast

from agents.items import TResponseInputItem
from agents.memory.session_settings import SessionSettings, coerce_session_settings, resolve_session_limit

from .. import _validate as check
from ..errors import InvalidInput, InvalidMessage, InvalidType, SessionOwnershipError, StoreUnavailable
from ..store import PostgresSessionStore
from ._items import to_items, to_message


class PostgresSession:
    """Conversation history for ``Runner.run(agent, input, session=...)``.

    Satisfies ``agents.memory.Session`` structurally and behaves like the SDK's own sessions:
    usable at once (no ``connect()`` needed), from any event loop or thread, and
    ``get_items(limit)`` returns exactly the latest *limit* items (``None`` or a negative
    limit: all of them), leaving pairing to the Runner. Many sessions share one store (and
    its pools). The session row is created on first write, owned by *user_id*, for
    *agent_name*; a session id that belongs to another user raises
    :class:`~convostore.errors.SessionOwnershipError` instead of showing its history.

    ``add_items`` is one atomic round trip, and the items of one call stay contiguous even
    when several runs write the same session at once. It is idempotent across retries: a call
    that failed ambiguously (``StoreUnavailable`` or ``StoreTimeout``: it may have committed)
    and is retried with the same items on the same session object reuses the same message
    ids, so the items are stored once. Across processes, pass ``idempotency_key=`` (the same
    key for the same call) to get the same guarantee.

    Scope: the session acts in *tenant* (default: the store's) for *user_id* (default: the
    user of a store view made with ``store.scoped(user=...)``, else ``"default"``). When the
    SDK passes its run context (``wrapper``) and that context names a ``user_id`` or
    ``tenant_id`` (as attributes or keys), they must be this session's, so that one user's
    session object can never serve another user's run.
    """

    def __init__(
        self,
        session_id: str,
        *,
        store: PostgresSessionStore,
        user_id: str | None = None,
        agent_name: str = "agent",
        tenant: str | None = None,
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(store, PostgresSessionStore):
            raise InvalidInput(f"store must be a PostgresSessionStore, not {type(store).__name__}")
        self.session_id: str = check.identifier(session_id, "session_id")
        self.user_id: str = store.acting_user(user_id) or "default"
        self.agent_name = check.identifier(agent_name, "agent_name")
        self.store = store.scoped(tenant=tenant) if tenant is not None else store
        self.tenant = self.store.tenant
        given = dict(session_settings) if isinstance(session_settings, Mapping) else session_settings
        try:
            settings = coerce_session_settings(given or SessionSettings())
        except TypeError as exc:  # an unknown key (the SDK's message, kept)
            raise InvalidType(str(exc)) from exc
        except Exception as exc:  # a bad value: pydantic's error
            raise InvalidInput(f"session_settings: {exc}") from exc
        self.session_settings: SessionSettings | None = settings
        # The ids of the last add_items call that failed ambiguously, by a digest of its items.
        self._unsettled: tuple[str, list[str]] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"PostgresSession({self.session_id!r}, user_id={self.user_id!r}, agent_name={self.agent_name!r}, "
            f"tenant={self.tenant!r})"
        )

    def _check_run(self, wrapper: Any) -> None:
        """Refuse a run whose context names another user or tenant than this session's."""
        context = getattr(wrapper, "context", None)
        if context is None:
            return
        for key, mine in (("user_id", self.user_id), ("tenant_id", self.tenant)):
            theirs = context.get(key) if isinstance(context, Mapping) else getattr(context, key, None)
            if isinstance(theirs, str) and theirs != mine:
                raise SessionOwnershipError(
                    f"the run's context is for {key} {theirs!r}; session {self.session_id!r} is {mine!r}'s"
                )

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> list[TResponseInputItem]:
        """The latest *limit* items (default: ``session_settings.limit``; ``None`` or negative:
        all), oldest first."""
        self._check_run(wrapper)
        effective = resolve_session_limit(limit, self.session_settings)
        if effective is not None and (isinstance(effective, bool) or not isinstance(effective, int)):
            raise InvalidInput(f"limit must be an int or None, not {type(effective).__name__}")
        if effective is not None and effective < 0:
            effective = None
        if effective == 0:
            return []
        messages = await self.store.get_messages(self.session_id, limit=effective, user_id=self.user_id)
        # Items written through the SDK are their raw column; a message written with the store
        # API may expand into several items, so the window is cut again in items.
        items = [item for message in messages for item in to_items(message)]
        if effective is not None:
            items = items[-effective:]
        return cast(list[TResponseInputItem], items)

    async def add_items(
        self, items: list[TResponseInputItem], *, wrapper: Any = None, idempotency_key: str | None = None
    ) -> None:
        """Append *items* in order, atomically, in one statement (idempotent on retry: see the
        class docstring)."""
        self._check_run(wrapper)
        if not items:
            return
        messages = [to_message(item, index) for index, item in enumerate(items)]
        digest = _digest(items)
        ids = self._ids_for(digest, len(messages), idempotency_key)
        batch = [dataclasses.replace(m, id=i) for m, i in zip(messages, ids, strict=True)]
        try:
            await self.store.add_messages(self.session_id, batch, user_id=self.user_id, agent_name=self.agent_name)
        except BaseException as exc:
            with self._lock:
                # May have committed: a retry of the same items must carry the same ids.
                ambiguous = isinstance(exc, StoreUnavailable) or not isinstance(exc, Exception)
                self._unsettled = (digest, ids) if ambiguous else None
            raise
        with self._lock:
            if self._unsettled is not None and self._unsettled[0] == digest:
                self._unsettled = None

    def _ids_for(self, digest: str, count: int, key: str | None) -> list[str]:
        if key is not None:
            base = hashlib.sha256(check.identifier(key, "idempotency_key").encode()).hexdigest()[:32]
            return [f"k{base}-{n}" for n in range(count)]
        with self._lock:
            if self._unsettled is not None and self._unsettled[0] == digest:
                return self._unsettled[1]
        base = secrets.token_hex(16)
        return [f"{base}-{n}" for n in range(count)]

    async def pop_item(self, *, wrapper: Any = None) -> TResponseInputItem | None:
        """Remove and return the newest item (each item is popped once under concurrency)."""
        self._check_run(wrapper)
        message = await self.store.pop_message(self.session_id, user_id=self.user_id)
        if message is None:
            return None
        return cast(TResponseInputItem, to_items(message)[-1])

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Delete every item of this session (the session row and its metadata stay)."""
        self._check_run(wrapper)
        await self.store.clear_session(self.session_id, user_id=self.user_id)


def _digest(items: list[Any]) -> str:
    """A digest of *items* that is equal for equal items (a retried call)."""
    try:
        text = json.dumps([_plain(i) for i in items], sort_keys=True, default=str, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"items are not JSON-serialisable: {exc}") from exc
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _plain(item: Any) -> Any:
    dump = getattr(item, "model_dump", None)
    return dump(exclude_unset=True, mode="json") if callable(dump) else item
