"""Sessions: creating, reading, listing, updating and deleting them (not their messages)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import asyncpg

from . import _validate as check
from ._rows import session_from_row, sessions_from_joined_rows
from ._scope import Scope, fetch
from ._types import Connection
from .errors import (
    InvalidIdentifier,
    InvalidInput,
    InvalidMetadata,
    SessionExists,
    SessionNotFound,
    SessionOwnershipError,
)
from .models import Session, SessionCursor


async def create_session(
    s: Scope,
    user_id: str | None,
    agent_name: str,
    metadata: Mapping[str, Any] | None,
    session_id: str | None,
    ttl: timedelta | float | None,
    expires_in: timedelta | float | None,
) -> Session:
    """The store's ``create_session`` (documented there)."""
    owner = s.acting_user(user_id)
    if owner is None:
        raise InvalidIdentifier("user_id must be given (the session's owner)")
    if ttl is not None and expires_in is not None:
        raise InvalidInput("give ttl (a sliding expiry) or expires_in (a fixed one), not both")
    chosen = session_id is not None
    sid = check.new_session_id(session_id) if chosen else str(uuid.uuid4())
    args = (
        s.tenant,
        sid,
        owner,
        check.identifier(agent_name, "agent_name"),
        check.metadata(metadata),
        check.duration(ttl, "ttl"),
        check.duration(expires_in, "expires_in"),
    )
    attempts = 0

    async def create(conn: Connection) -> Any:
        nonlocal attempts
        attempts += 1
        try:
            return await conn.fetchrow(s.queries.create_session, *args)
        except asyncpg.UniqueViolationError:
            if chosen or attempts == 1:
                raise SessionExists(f"session {sid!r} already exists") from None
            # Our own new id, found on a retry: the first attempt committed unacknowledged.
            # Read it back in a call of its own: here the statement's transaction (the
            # row-level security scope's, if any) is aborted, and its COMMIT rolls back.
            return None

    row = await s.write("create_session", create, session_id=sid)
    if row is None:
        rows = await s.run("create_session", partial(fetch, s.queries.get_session, (s.tenant, sid)), session_id=sid)
        if not rows:
            raise SessionNotFound(f"session {sid!r} was created, then deleted before it could be read back")
        row = rows[0]
    return session_from_row(row)


async def get_session(s: Scope, session_id: str) -> Session | None:
    """The store's ``get_session`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    rows = await s.run("get_session", lambda c: c.fetch(s.queries.get_session, s.tenant, sid), session_id=sid)
    found = sessions_from_joined_rows(rows, s.opener)
    if not found:
        return None
    if s.user is not None and found[0].user_id != s.user:
        raise SessionOwnershipError(f"session {sid!r} belongs to another user")
    return found[0]


async def _missing(s: Scope, sid: str) -> SessionNotFound | SessionOwnershipError:
    """Why a statement scoped to the view's user found no session *sid*."""
    why = None if s.user is None else await s.why_not("check owner", sid, s.user)
    return why or SessionNotFound(f"session {sid!r} does not exist")


async def update_metadata(s: Scope, session_id: str, patch: Mapping[str, Any]) -> Session:
    """The store's ``update_metadata`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    if patch is None:
        raise InvalidMetadata("patch must be a mapping, not None")
    data = check.metadata(patch)
    row = await s.write(
        "update_metadata",
        lambda c: c.fetchrow(s.queries.update_metadata, s.tenant, sid, s.user, data),
        session_id=sid,
    )
    if row is None:
        raise await _missing(s, sid)
    return session_from_row(row)


async def set_expiry(
    s: Scope, session_id: str, ttl: timedelta | float | None, expires_in: timedelta | float | None
) -> Session:
    """The store's ``set_expiry`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    sliding, fixed = check.duration(ttl, "ttl"), check.duration(expires_in, "expires_in")
    if sliding is not None and fixed is not None:
        raise InvalidInput("give ttl (a sliding expiry) or expires_in (a fixed one), not both")
    row = await s.write(
        "set_expiry",
        lambda c: c.fetchrow(s.queries.set_expiry, s.tenant, sid, s.user, sliding, fixed),
        session_id=sid,
    )
    if row is None:
        raise await _missing(s, sid)
    return session_from_row(row)


async def delete_session(s: Scope, session_id: str) -> bool:
    """The store's ``delete_session`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    gone = await s.write(
        "delete_session",
        lambda c: c.fetchval(s.queries.delete_session, s.tenant, sid, s.user, s.actor),
        session_id=sid,
    )
    if not gone and s.user is not None:
        why = await s.why_not("check owner", sid, s.user)
        if isinstance(why, SessionOwnershipError):
            raise why
    return bool(gone)


async def get_user_sessions(
    s: Scope,
    user_id: str | None,
    limit: int,
    before: Session | SessionCursor | None,
    with_messages: bool,
    messages_limit: int | None,
    agent_name: str | None,
) -> list[Session]:
    """The store's ``get_user_sessions`` (documented there)."""
    uid = s.acting_user(user_id)
    if uid is None:
        raise InvalidIdentifier("user_id must be given")
    page = check.limit(limit)
    per_session = check.limit(messages_limit, "messages_limit")
    agent = check.optional_identifier(agent_name, "agent_name")
    cursor = check.cursor(before)
    after_time = cursor.updated_at if cursor else None
    after_id = cursor.id if cursor else None
    if with_messages:
        args = (s.tenant, uid, after_time, after_id, page, agent, per_session)
        rows = await s.run("get_user_sessions", lambda c: c.fetch(s.queries.user_sessions_with_messages, *args))
        return sessions_from_joined_rows(rows, s.opener)
    rows = await s.run(
        "get_user_sessions",
        lambda c: c.fetch(s.queries.user_sessions, s.tenant, uid, after_time, after_id, page, agent),
    )
    return [session_from_row(r, count=r["message_count"]) for r in rows]


async def list_sessions(
    s: Scope,
    user_id: str | None,
    agent_name: str | None,
    updated_since: datetime | None,
    metadata: Mapping[str, Any] | None,
    limit: int,
    before: Session | SessionCursor | None,
) -> list[Session]:
    """The store's ``list_sessions`` (documented there)."""
    uid = s.acting_user(user_id)
    agent = check.optional_identifier(agent_name, "agent_name")
    page = check.limit(limit)
    if not page or page > 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    if updated_since is not None and (not isinstance(updated_since, datetime) or updated_since.tzinfo is None):
        raise InvalidInput("updated_since must be a timezone-aware datetime")
    contains = None if metadata is None else check.metadata(metadata)
    cursor = check.cursor(before)
    after_time, after_id = (cursor.updated_at, cursor.id) if cursor else (None, None)
    args = (s.tenant, uid, after_time, after_id, page, agent, updated_since, contains)
    rows = await s.run("list_sessions", lambda c: c.fetch(s.queries.list_sessions, *args))
    return [session_from_row(r, count=r["message_count"]) for r in rows]
