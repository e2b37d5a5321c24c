"""``PostgresSession``: the Agents SDK ``Session`` protocol on a :class:`PostgresSessionStore`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

from agents.items import TResponseInputItem
from agents.memory.session import _CompactionSnapshot
from agents.memory.session_settings import SessionSettings, coerce_session_settings, resolve_session_limit

from .. import _validate as check
from ..errors import (
    InvalidInput,
    InvalidMessage,
    InvalidType,
    SessionNotFound,
    SessionOwnershipError,
    StoreUnavailable,
)
from ..models import Message
from ..store import PostgresSessionStore
from ..windows import Window
from ._items import to_items, to_message

logger = logging.getLogger("convostore.openai_agents")


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

    History: the session reads and writes *branch* (see ``store.fork_session``). A *window*
    (:class:`~convostore.windows.Window`) gives the model the latest turns or tokens when no
    limit is asked for; an explicit limit (or ``session_settings.limit``) keeps the SDK's
    meaning. The SDK's compaction (``OpenAIResponsesCompactionSession``) replaces a suffix of
    the history atomically and keeps what it replaced stored (``get_messages(raw=True)``,
    export): ``get_items`` returns the summary and what came after.
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
        branch: str = "main",
        window: Window | None = None,
    ) -> None:
        if not isinstance(store, PostgresSessionStore):
            raise InvalidInput(f"store must be a PostgresSessionStore, not {type(store).__name__}")
        self.session_id: str = check.identifier(session_id, "session_id")
        self.user_id: str = store.acting_user(user_id) or "default"
        self.agent_name = check.identifier(agent_name, "agent_name")
        self.store = store.scoped(tenant=tenant) if tenant is not None else store
        self.tenant = self.store.tenant
        self.branch = check.identifier(branch, "branch")
        if window is not None and not isinstance(window, Window):
            raise InvalidType(f"window must be a convostore.Window, not {type(window).__name__}")
        self.window = window
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
            f"tenant={self.tenant!r}, branch={self.branch!r})"
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
        """The latest *limit* items (default: ``session_settings.limit``, else the session's
        window; ``None`` or negative: all), oldest first."""
        self._check_run(wrapper)
        effective = resolve_session_limit(limit, self.session_settings)
        if effective is not None and (isinstance(effective, bool) or not isinstance(effective, int)):
            raise InvalidInput(f"limit must be an int or None, not {type(effective).__name__}")
        if effective is not None and effective < 0:
            effective = None
        if effective == 0:
            return []
        window = self.window if effective is None and limit is None else None
        messages = await self.store.get_messages(
            self.session_id, limit=effective, user_id=self.user_id, branch=self.branch, window=window
        )
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
            await self.store.add_messages(
                self.session_id, batch, user_id=self.user_id, agent_name=self.agent_name, branch=self.branch
            )
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
        message = await self.store.pop_message(self.session_id, user_id=self.user_id, branch=self.branch)
        if message is None:
            return None
        return cast(TResponseInputItem, to_items(message)[-1])

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Delete every item of this session's branch (the session row and its metadata stay;
        what other branches share stays theirs)."""
        self._check_run(wrapper)
        await self.store.clear_session(self.session_id, user_id=self.user_id, branch=self.branch)

    # -- the SDK's compaction (OpenAIResponsesCompactionSession) --------------------------------

    async def _get_compaction_snapshot(
        self, limit: int, *, prune_prefix: Callable[[TResponseInputItem], bool] | None = None
    ) -> _CompactionSnapshot | None:
        """The latest *limit* items of the compacted view (``complete`` when that is all of
        it), with an atomic replacement of any suffix of them that keeps the replaced messages
        stored. With *prune_prefix* (an ``EncryptedSession``'s test for expired items), the
        replacement also hides the view's oldest items while they are expired (stored still).

        ``None`` (the SDK then falls back to its own replacement) when a subclass changes how
        items are stored or read: its overrides must see the change.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 or self._storage_overridden():
            return None
        # One more than asked for tells whether these are all of them.
        messages = await self.store.get_messages(
            self.session_id, limit=limit + 1, user_id=self.user_id, branch=self.branch
        )
        owners: list[Message] = []  # the message each item comes from
        items: list[Any] = []
        for message in messages:
            for item in to_items(message):
                owners.append(message)
                items.append(item)
        complete = len(messages) <= limit and len(items) <= limit
        owners, items = owners[-limit:], items[-limit:]

        async def replace_suffix(start: int, output: list[TResponseInputItem]) -> bool:
            if not 0 <= start < len(items):
                return False
            first = owners[start]
            if start > 0 and owners[start - 1] is first:
                return False  # the suffix would start inside a message of several items
            seqs = list(dict.fromkeys(m.seq for m in owners[start:]))
            prune_to = await self._expired_prefix(prune_prefix, first.seq) if prune_prefix is not None else None
            return await self._compact(output, from_seq=first.seq, expect=seqs, prune_to=prune_to)

        return _CompactionSnapshot(cast(list[TResponseInputItem], items), complete, replace_suffix)

    async def _expired_prefix(self, expired: Callable[[TResponseInputItem], bool], before: int) -> int | None:
        """The seq of the last of the view's oldest items that *expired* says are expired,
        before seq *before* (stopping at the first live or unreadable one); ``None`` if none."""
        last: int | None = None
        after = 0
        while True:
            page = await self.store.get_messages(
                self.session_id, after_seq=after, limit=200, user_id=self.user_id, branch=self.branch
            )
            for message in page:
                if message.seq >= before:
                    return last
                try:
                    gone = all(expired(cast(TResponseInputItem, item)) for item in to_items(message))
                except Exception:
                    return last  # unreadable: kept, as the SDK's own sessions keep it
                if not gone:
                    return last
                last = message.seq
            if len(page) < 200:
                return last
            after = page[-1].seq

    async def _atomic_replace_items(self, items: list[TResponseInputItem]) -> bool:
        """Replace the whole compacted view with *items* in one transaction, keeping what it
        held stored; ``False`` (the SDK then clears and adds) when there is nothing to replace,
        or when a subclass changes how items are stored."""
        if self._storage_overridden():
            return False
        return await self._compact(items, from_seq=None, expect=None)

    def _storage_overridden(self) -> bool:
        cls = type(self)
        return any(
            getattr(cls, name) is not getattr(PostgresSession, name)
            for name in ("get_items", "add_items", "pop_item", "clear_session")
        )

    async def _compact(
        self, items: list[Any], *, from_seq: int | None, expect: list[int] | None, prune_to: int | None = None
    ) -> bool:
        base = secrets.token_hex(16)
        summary = [dataclasses.replace(to_message(item, n), id=f"{base}-{n}") for n, item in enumerate(items)]
        try:
            stored = await self.store.compact(
                self.session_id,
                summary,
                from_seq=from_seq,
                expect=expect,
                prune_to=prune_to,
                branch=self.branch,
                user_id=self.user_id,
            )
        except SessionNotFound:
            return False  # nothing stored yet: nothing to replace
        if stored is None:
            logger.info("compaction of session %s skipped: its history changed meanwhile", self.session_id)
        return stored is not None


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
