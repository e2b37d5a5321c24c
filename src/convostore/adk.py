"""``PostgresSessionService``: Google ADK's session service on a convostore store.

``pip install 'convostore[adk]'``. A thin adapter over the store's public API:

* an ADK session is a convostore session of the ADK app (``agent_name``) owned by its user;
  its id is ``<app>:<user>:<session id>`` so that, as in ADK, session ids are per app and
  user (the CLI and the browser show it so);
* each event is one message, kept whole in ``raw`` (its id the event's, so an event
  delivered twice is stored once) and projected onto the columns (user or assistant, its
  text, its function calls, the call a function response answers);
* session state (keys without a prefix) lives in the session's metadata; ``app:`` and
  ``user:`` state in the store's agent and user state (``store.get_state``); ``temp:``
  state is never stored, as in ADK.

``append_event`` stores what the event's ``actions.state_delta`` changes, merged into what
is stored (JSONB ``||``, key by key, as ADK's own services do), never the caller's whole
``session.state``: two holders of one session do not erase each other's keys. As in ADK's
database service, a holder whose copy is older than what is stored (another copy appended
since it was loaded) gets ADK's ``StaleSessionError`` and nothing is written; it reloads the
session and appends again. The check and the session state's merge are one statement, run
first; then the app and user state, then the event. Each step is idempotent, so a retried
``append_event`` after a failure between them completes it (a retry of the same event,
recognised by the stored update being its own, is not stale).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.sessions import _session_util
from google.adk.sessions.base_session_service import BaseSessionService, GetSessionConfig, ListSessionsResponse
from google.adk.sessions.session import Session
from google.adk.sessions.state import State

from . import _validate as check
from ._sql import in_schema, quote_ident
from .errors import DuplicateMessageId, InvalidInput, SessionExists, SessionNotFound, SessionOwnershipError
from .models import Message, NewMessage
from .models import Session as StoredSession
from .store import PostgresSessionStore

__all__ = ["PostgresSessionService"]

_STATE = "state"
_UPDATED = "last_update_time"
_LAST_EVENT = "last_event_id"  # which event set last_update_time: a retry of it is not stale
_PAGE = 500

# The session's update time as stored (none: a session older than this adapter's key).
_STORED_TIME = (
    f"coalesce(CASE WHEN jsonb_typeof(metadata -> '{_UPDATED}') = 'number' "
    f"THEN (metadata ->> '{_UPDATED}')::float8 END, '-infinity')"
)
# The session state delta $5 merged into the stored state, and the session's update time
# set to the event's ($6, and its id $7), only if the stored one is not newer than the
# caller's copy ($4), or was set by this event (a retry). Under the row lock, a concurrent
# holder's update is seen before the test is made: of two holders of one copy, the second
# is refused.
# $1 tenant, $2 session key, $3 the view's user. Kept here, beside its one caller: it is
# the adapter's own (so are the metadata keys it reads).
_MERGE_STATE = f"""
UPDATE {{s}}.agent_sessions
   SET metadata = jsonb_set(metadata, '{{{_STATE}}}',
                            coalesce(CASE WHEN jsonb_typeof(metadata -> '{_STATE}') = 'object'
                                          THEN metadata -> '{_STATE}' END, '{{}}') || $5::jsonb)
                  || jsonb_build_object('{_UPDATED}', $6::float8, '{_LAST_EVENT}', $7::text),
       updated_at = now()
 WHERE tenant_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)
   AND ({_STORED_TIME} <= $4::float8 OR ({_STORED_TIME} = $6::float8 AND metadata ->> '{_LAST_EVENT}' = $7))
RETURNING 1
"""


class PostgresSessionService(BaseSessionService):
    """A Google ADK ``BaseSessionService`` kept in convostore (see the module docstring)."""

    def __init__(self, store: PostgresSessionStore) -> None:
        if not isinstance(store, PostgresSessionStore):
            raise InvalidInput(f"store must be a PostgresSessionStore, not {type(store).__name__}")
        self.store = store

    # -- ids ------------------------------------------------------------------------------------

    @staticmethod
    def _key(app_name: str, user_id: str, session_id: str) -> str:
        key = f"{app_name}:{user_id}:{session_id}"
        if len(key) > 255:  # the store's limit: a digest stands in for a long combination
            key = f"{app_name[:80]}:{hashlib.sha256(key.encode()).hexdigest()}"
        return check.identifier(key, "session_id")

    def _view(self, user_id: str) -> PostgresSessionStore:
        return self.store.scoped(user=check.scope_name(user_id, "user_id"))

    # -- state ----------------------------------------------------------------------------------

    async def _merged(self, app_name: str, user_id: str, session_state: dict[str, Any]) -> dict[str, Any]:
        state = dict(session_state)
        for key, value in (await self.store.get_state(app_name)).items():
            state[State.APP_PREFIX + key] = value
        for key, value in (await self.store.get_state(app_name, user_id=user_id)).items():
            state[State.USER_PREFIX + key] = value
        return state

    async def _apply(self, app_name: str, user_id: str, deltas: dict[str, dict[str, Any]]) -> None:
        if deltas["app"]:
            await self.store.update_state(app_name, deltas["app"])
        if deltas["user"]:
            await self.store.update_state(app_name, deltas["user"], user_id=user_id)

    def _session(self, app_name: str, user_id: str, session_id: str, stored: StoredSession) -> Session:
        metadata = stored.metadata
        updated = metadata.get(_UPDATED)
        return Session(
            id=session_id,
            app_name=app_name,
            user_id=user_id,
            state=dict(metadata.get(_STATE) or {}),
            events=[],
            last_update_time=float(updated) if isinstance(updated, (int, float)) else stored.updated_at.timestamp(),
        )

    # -- the service ------------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Create a session (ADK's ``AlreadyExistsError`` if the app's user has that id)."""
        sid = session_id.strip() if session_id and session_id.strip() else str(uuid.uuid4())
        deltas = _session_util.extract_state_delta(_session_util.make_json_safe_state(state or {}))
        now = datetime.now(UTC).timestamp()
        metadata = {_STATE: deltas["session"], _UPDATED: now}
        try:
            stored = await self._view(user_id).create_session(
                user_id, app_name, metadata, session_id=self._key(app_name, user_id, sid)
            )
        except SessionExists as exc:
            raise AlreadyExistsError(f"Session with id {sid} already exists.") from exc
        await self._apply(app_name, user_id, deltas)
        session = self._session(app_name, user_id, sid, stored)
        session.state = await self._merged(app_name, user_id, session.state)
        return session

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        """The session with its events (the latest ``num_recent_events``, those at or after
        ``after_timestamp``) and its state merged with the app's and the user's."""
        sid = session_id.strip() if session_id else session_id
        key = self._key(app_name, user_id, sid)
        view = self._view(user_id)
        try:
            stored = await view.get_session(key)
        except SessionOwnershipError:
            return None
        if stored is None or stored.agent_name != app_name:
            return None
        limit = config.num_recent_events if config is not None else None
        if limit == 0:
            messages: list[Message] = []
        else:
            messages = await view.get_messages(key, limit=limit)
        events = [_event(m) for m in messages]
        if config is not None and config.after_timestamp is not None:
            events = [e for e in events if e.timestamp >= config.after_timestamp]
        session = self._session(app_name, user_id, sid, stored)
        session.events = events
        session.state = await self._merged(app_name, user_id, session.state)
        return session

    async def iter_sessions(self, *, app_name: str, user_id: str | None = None) -> AsyncIterator[Session]:
        """The app's sessions (a user's, if given), without events, newest first, read in
        keyset pages so that any number of them streams in flat memory."""
        view = self._view(user_id) if user_id is not None else self.store
        before: StoredSession | None = None
        while True:
            page = await view.list_sessions(agent_name=app_name, user_id=user_id, limit=_PAGE, before=before)
            for stored in page:
                prefix = f"{app_name}:{stored.user_id}:"
                sid = stored.id[len(prefix) :] if stored.id.startswith(prefix) else stored.id
                session = self._session(app_name, stored.user_id, sid, stored)
                session.state = await self._merged(app_name, stored.user_id, session.state)
                yield session
            if len(page) < _PAGE:
                return
            before = page[-1]

    async def list_sessions(self, *, app_name: str, user_id: str | None = None) -> ListSessionsResponse:
        """The app's sessions (a user's, if given), without events, least recently updated
        first (as ADK documents); see :meth:`iter_sessions` to stream them instead."""
        sessions = [s async for s in self.iter_sessions(app_name=app_name, user_id=user_id)]
        sessions.sort(key=lambda s: (s.last_update_time, s.user_id, s.id))
        return ListSessionsResponse(sessions=sessions)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Delete the session and its events (nothing if there is none)."""
        sid = session_id.strip() if session_id else session_id
        try:
            await self._view(user_id).delete_session(self._key(app_name, user_id, sid))
        except SessionOwnershipError:
            return

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user's state for the app, without the ``user:`` prefix."""
        return await self.store.get_state(app_name, user_id=user_id)

    async def append_event(self, session: Session, event: Event) -> Event:
        """Store *event* (once, whatever the retries) and the state its delta changes;
        ADK's ``StaleSessionError`` (nothing written) if *session* is older than what is
        stored."""
        if event.partial:
            return event
        key = self._key(session.app_name, session.user_id, session.id)
        view = self._view(session.user_id)
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        message = _message(event)
        # As in ADK's own services, a value JSON cannot hold (a callable, say) is kept as its text.
        deltas = _session_util.extract_state_delta(
            _session_util.make_json_safe_state(event.actions.state_delta if event.actions else {})
        )
        await self._merge_session_state(view, key, session, deltas["session"], event)
        await self._apply(session.app_name, session.user_id, deltas)
        try:
            await view.add_messages(key, [message])
        except SessionNotFound as exc:
            raise SessionNotFoundError(f"Session {session.id} not found.") from exc
        except SessionOwnershipError as exc:
            raise SessionNotFoundError(f"Session {session.id} not found.") from exc
        except DuplicateMessageId:
            # Another event under the same id (ADK never reuses one; a caller might): kept
            # under an id of its own content, still stored once if delivered again.
            digest = hashlib.sha256(json.dumps(message.raw, sort_keys=True).encode()).hexdigest()[:16]
            await view.add_messages(key, [_with_id(message, f"{event.id}.{digest}")])
        self._commit_event_to_session(session, event)
        session.last_update_time = event.timestamp
        return event

    async def _merge_session_state(
        self, view: PostgresSessionStore, key: str, session: Session, delta: dict[str, Any], event: Event
    ) -> None:
        """Merge *delta* (of *event*) into the stored session state, unless *session* is stale."""
        sql = in_schema(_MERGE_STATE, quote_ident(view.schema))
        stamp = (float(event.timestamp), event.id)
        args = (view.tenant, key, view.user, float(session.last_update_time), check.metadata(delta), *stamp)

        async def merge(conn: Any) -> Any:
            return await conn.fetchval(sql, *args)

        if await view._scope.runner.run("append_event", merge, session_id=key, scope=view.scope()) is not None:
            return
        try:
            stored = await view.get_session(key)
        except SessionOwnershipError:
            stored = None
        if stored is None or stored.agent_name != session.app_name:
            raise SessionNotFoundError(f"Session {session.id} not found.")
        raise StaleSessionError(
            "The session has been modified in storage since it was loaded. "
            "Please reload the session before appending more events."
        )


_SCOPED_PREFIXES = (State.APP_PREFIX, State.USER_PREFIX, State.TEMP_PREFIX)


def _with_id(message: NewMessage, message_id: str) -> NewMessage:
    return NewMessage(message.role, message.content, message.tool_calls, message.tool_call_id, message_id, message.raw)


def _message(event: Event) -> NewMessage:
    """An ADK event as a stored message, kept whole in ``raw``."""
    raw = event.model_dump(mode="json", exclude_none=True)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    answered: str | None = None
    parts = (event.content.parts or []) if event.content is not None else []
    for part in parts:
        if part.text and not part.thought:
            texts.append(part.text)
        if part.function_call is not None and part.function_call.id:
            arguments = json.dumps(part.function_call.args or {}, default=str)
            function = {"name": part.function_call.name, "arguments": arguments}
            calls.append({"id": part.function_call.id, "type": "function", "function": function})
        if part.function_response is not None and answered is None and part.function_response.id:
            answered = part.function_response.id
            if not texts:
                texts.append(json.dumps(part.function_response.response, default=str))
    role = "tool" if answered is not None else ("user" if event.author == "user" else "assistant")
    return NewMessage(role, "\n".join(texts), calls or None, answered, event.id or None, raw)


def _event(message: Message) -> Event:
    """A stored message as the ADK event it was (or, written by another framework, the
    nearest: its text from its author)."""
    raw = message.raw
    if isinstance(raw, dict) and "invocation_id" in raw and "author" in raw:
        return Event.model_validate(raw)
    from google.genai import types

    author = "user" if message.role == "user" else "model"
    return Event(
        id=message.id,
        invocation_id="",
        author=author,
        content=types.Content(role="user" if author == "user" else "model", parts=[types.Part(text=message.content)]),
        timestamp=message.created_at.timestamp(),
    )
