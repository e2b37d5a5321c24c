"""The HTTP API under ``/v1``, and the health endpoints.

Every ``/v1`` operation authenticates with an API key (``Authorization: Bearer csk_...``)
and acts in the store view the key allows: its tenant, and its user for a user's key. The
handlers only translate between HTTP and the store's methods; the store validates and
enforces ownership, and its errors become problem responses (see :mod:`.problems`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import StreamingResponse

from ..errors import ConvostoreError, SchemaNotReady
from ..models import NewMessage
from ..store import PostgresSessionStore
from ..transfer import export_jsonl
from ..windows import Window
from .auth import TENANT_HEADER, Authenticator, Principal
from .paging import CURSOR_PATTERN, decode_cursor, encode_cursor, parse_time
from .problems import ApiProblem, api_responses, problem_response, responses, session_not_found
from .schemas import (
    ID_PATTERN,
    MAX_ID,
    MAX_SEQ,
    MAX_WINDOW,
    NAME_PATTERN,
    NON_BLANK_PATTERN,
    AppendIn,
    AppendOut,
    BranchDeletionOut,
    BranchOut,
    BranchPage,
    CompactIn,
    CompactOut,
    ErasureOut,
    ForkIn,
    Health,
    MessageIn,
    MessageOut,
    MessagePage,
    Readiness,
    SearchHitOut,
    SearchPage,
    SessionIn,
    SessionOut,
    SessionPage,
    SessionPatch,
    UsageOut,
    UsagePage,
    json_too_deep,
    too_deep_issue,
)

READY_TIMEOUT = 5.0  # seconds /readyz waits for the database before saying it is not ready

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    bearerFormat="csk_<id>_<secret>",
    description="An API key made by `convostore keys create`, sent as `Authorization: Bearer csk_...`.",
)


async def authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    tenant: Annotated[
        str | None,
        Header(
            alias=TENANT_HEADER,
            min_length=1,
            max_length=MAX_ID,
            pattern=NAME_PATTERN,
            description="The tenant to act in: any for an operator's key (default: the server's), "
            "only its own for any other key (403 otherwise).",
        ),
    ] = None,
) -> Principal:
    """The principal of an API request (a 401 problem without a valid key)."""
    auth: Authenticator = request.app.state.auth
    return await auth.principal(credentials.credentials if credentials else None, tenant)


Auth = Annotated[Principal, Depends(authenticated)]

# Query and path parameters, with the store's rules for ids (see .schemas).
SessionId = Annotated[str, Path(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN, description="The session's id.")]
BranchName = Annotated[str, Path(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN, description="The branch's name.")]
UserFilter = Annotated[
    str | None, Query(min_length=1, max_length=MAX_ID, pattern=NAME_PATTERN, description="Only this user's.")
]
AgentFilter = Annotated[
    str | None, Query(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN, description="Only this agent's.")
]
SessionFilter = Annotated[
    str | None, Query(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN, description="Only this session's.")
]


def _time_query(description: str) -> object:
    return Query(max_length=64, description=description, json_schema_extra={"format": "date-time"})


class DepthCheckedRoute(APIRoute):
    """A route whose JSON body is refused (422) when nested deeper than the decoders can
    go, before anything parses it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            # The body is read once: Starlette keeps it for the handler's own parsing.
            if request.method in ("POST", "PUT", "PATCH") and json_too_deep(await request.body()):
                raise RequestValidationError([too_deep_issue("body")])
            return await handler(request)

        return checked


router = APIRouter(prefix="/v1", tags=["v1"], route_class=DepthCheckedRoute)
health = APIRouter(tags=["health"])


# -- sessions ---------------------------------------------------------------------------------


@router.get("/sessions", response_model=SessionPage, responses=api_responses(400))
async def list_sessions(
    principal: Auth,
    user_id: UserFilter = None,
    agent: AgentFilter = None,
    updated_since: Annotated[str | None, _time_query("Only sessions updated at or after this time.")] = None,
    metadata: Annotated[
        str | None,
        Query(
            max_length=4096,
            description="Only sessions whose metadata contains this JSON object (JSONB containment).",
            json_schema_extra={"x-convostore-json-object": True},
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Sessions per page.")] = 50,
    before: Annotated[
        str | None,
        Query(
            pattern=CURSOR_PATTERN,
            description="The `next` of the previous page.",
            json_schema_extra={"format": "convostore-cursor"},
        ),
    ] = None,
) -> SessionPage:
    """The sessions the key can see, most recently updated first, each with its message count;
    keyset-paginated (`next` is an opaque cursor for `before`)."""
    contains = None
    if metadata is not None:
        if json_too_deep(metadata.encode("utf-8", "surrogatepass")):
            raise RequestValidationError([too_deep_issue("query", "metadata")])
        try:
            contains = json.loads(metadata)
        except ValueError:
            contains = None
        if not isinstance(contains, dict):
            raise ApiProblem(400, "invalid-input", "Invalid input", "metadata must be a JSON object")
    found = await principal.view.list_sessions(
        user_id=user_id,
        agent_name=agent,
        updated_since=None if updated_since is None else parse_time(updated_since, "updated_since"),
        metadata=contains,
        limit=limit + 1,  # one more tells whether there is a next page
        before=None if before is None else decode_cursor(before),
    )
    page = found[:limit]
    more = len(found) > limit
    return SessionPage(items=[SessionOut.of(s) for s in page], next=encode_cursor(page[-1].cursor) if more else None)


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionOut,
    responses={
        201: {"headers": {"Location": {"description": "The session's URL.", "schema": {"type": "string"}}}},
        **api_responses(400, 409, 413),
    },
)
async def create_session(principal: Auth, body: SessionIn, response: Response) -> SessionOut:
    """Create a session (its id is generated unless given; an existing id is a 409)."""
    session = await principal.view.create_session(
        body.user_id,
        body.agent_name,
        body.metadata,
        session_id=body.id,
        ttl=body.ttl,
        expires_in=body.expires_in,
    )
    response.headers["Location"] = f"/v1/sessions/{quote(session.id, safe='')}"
    return SessionOut.of(session)


# -- messages ---------------------------------------------------------------------------------

# Ids may hold "/" (a framework's own ids do): a session id is one path segment, encoded with
# quote(id, safe="") as in the Location header, and the ":text" converter decodes exactly that
# segment (the application routes on the path as sent: see .middleware.SegmentPaths).


@router.get("/sessions/{session_id:text}/messages", response_model=MessagePage, responses=api_responses(400, 404))
async def get_messages(
    principal: Auth,
    session_id: SessionId,
    limit: Annotated[int, Query(ge=1, le=1000, description="Messages per page.")] = 100,
    before_seq: Annotated[
        int | None, Query(ge=1, le=MAX_SEQ, description="Page backwards: the messages before this seq.")
    ] = None,
    after_seq: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Page forwards: the messages after this seq.")
    ] = None,
    branch: Annotated[str, Query(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)] = "main",
    raw: Annotated[bool, Query(description="Include the messages compaction summaries replaced.")] = False,
    turns: Annotated[
        int | None,
        Query(ge=0, le=MAX_WINDOW, description="A window: the latest this many turns (each starts at a user message)."),
    ] = None,
    tokens: Annotated[
        int | None, Query(ge=0, le=MAX_WINDOW, description="A window: the latest messages within this many tokens.")
    ] = None,
    pinned: Annotated[
        bool,
        Query(description="With a window: keep the view's system and developer messages before it (counted first)."),
    ] = True,
) -> MessagePage:
    """Messages of a branch's view, oldest first: the latest `limit`, or the `limit` before
    `before_seq`, or the first `limit` after `after_seq`.

    With `turns` or `tokens`, a window instead: the latest turns, or tokens, or the latest
    turns within the tokens (before `before_seq` if given, at most `limit` messages), started
    where no tool call is parted from its output nor a reasoning item from what follows it.
    A window is one answer, not a page: its `next_before` and `next_after` are null, and it
    cannot page forwards (`after_seq` with a window is a 400).
    """
    view = principal.view
    window = None if turns is None and tokens is None else Window(turns=turns, tokens=tokens, pinned=pinned)
    if window is not None:
        # Exactly `limit`: the store cuts the window safely; trimming it here could not.
        found = await view.get_messages(
            session_id, limit=limit, before_seq=before_seq, after_seq=after_seq, branch=branch, raw=raw, window=window
        )
        if not found:
            await view.list_branches(session_id)
        return MessagePage(items=[MessageOut.of(m) for m in found], next_before=None, next_after=None)
    found = await view.get_messages(
        session_id, limit=limit + 1, before_seq=before_seq, after_seq=after_seq, branch=branch, raw=raw
    )
    if not found:
        # No rows: an empty page of a session that exists, or no such session (or not ours).
        await view.list_branches(session_id)
    forwards = after_seq is not None
    more = len(found) > limit
    items = (found[:limit] if forwards else found[-limit:]) if more else found
    if forwards:
        next_after = items[-1].seq if more else None
        next_before = (items[0].seq if items else after_seq + 1) if after_seq else None
    else:
        next_before = items[0].seq if more else None
        next_after = (items[-1].seq if items else before_seq - 1) if before_seq else None
    return MessagePage(items=[MessageOut.of(m) for m in items], next_before=next_before, next_after=next_after)


def _new_messages(sent: list[MessageIn]) -> list[NewMessage]:
    """The store's messages for *sent* (a 409 if two of them share an id)."""
    ids = [m.id for m in sent if m.id is not None]
    if len(set(ids)) != len(ids):
        raise ApiProblem(
            409, "duplicate-message-id", "Message id already used", "message ids must be unique within a batch"
        )
    return [
        NewMessage(
            m.role,
            m.content,
            None if m.tool_calls is None else [c.model_dump() for c in m.tool_calls],
            getattr(m, "tool_call_id", None),
            m.id,
            m.raw,
        )
        for m in sent
    ]


@router.post(
    "/sessions/{session_id:text}/messages",
    status_code=201,
    response_model=AppendOut,
    responses=api_responses(400, 404, 409, 413),
)
async def append_messages(principal: Auth, session_id: SessionId, body: AppendIn) -> AppendOut:
    """Append messages atomically, in order, and return them as stored.

    Idempotent when the client gives the ids: resending a stored batch stores nothing and
    returns the stored messages, with the same 201 as the first time, so that a client can
    retry blindly. Reusing an id for a different message is a 409. With `user_id`, the session
    is created on first write.
    """
    owner = principal.view.user
    if body.user_id is not None and owner is not None and body.user_id != owner:
        # Refused whatever the session: answered here, before the session is looked at.
        raise ApiProblem(403, "forbidden", "Forbidden", f"this key acts for user {owner!r}, not {body.user_id!r}")
    messages = _new_messages(body.messages)
    stored = await principal.view.add_messages(
        session_id, messages, user_id=body.user_id, agent_name=body.agent_name or "agent", branch=body.branch
    )
    return AppendOut(items=[MessageOut.of(m) for m in stored])


@router.get("/sessions/{session_id:text}", response_model=SessionOut, responses=api_responses(400, 404))
async def get_session(principal: Auth, session_id: SessionId) -> SessionOut:
    """One session, without its messages (`message_count` counts those of its main branch)."""
    session = await principal.view.get_session(session_id)
    if session is None:
        raise session_not_found(session_id)
    return SessionOut.of(session)


@router.patch("/sessions/{session_id:text}", response_model=SessionOut, responses=api_responses(400, 404, 413))
async def update_session(principal: Auth, session_id: SessionId, body: SessionPatch) -> SessionOut:
    """Merge `metadata`'s top-level keys into the session's metadata, and return the session."""
    view = principal.view
    session = await view.update_metadata(session_id, body.metadata)
    # The store's answer counts no messages: `message_count` is main's, as GET reports it.
    count = next((b.messages for b in await view.list_branches(session_id) if b.name == "main"), 0)
    return SessionOut.of(session).model_copy(update={"message_count": count})


@router.delete(
    "/sessions/{session_id:text}",
    status_code=204,
    response_class=Response,
    responses=api_responses(400, 404),
)
async def delete_session(principal: Auth, session_id: SessionId) -> Response:
    """Delete a session and all its messages (audited)."""
    if not await principal.view.delete_session(session_id):
        raise session_not_found(session_id)
    return Response(status_code=204)


# -- branches, compaction -----------------------------------------------------------------------


@router.get("/sessions/{session_id:text}/branches", response_model=BranchPage, responses=api_responses(400, 404))
async def list_branches(principal: Auth, session_id: SessionId) -> BranchPage:
    """The session's branches, `main` first (unless deleted), each with its own message count."""
    return BranchPage(items=[BranchOut.of(b) for b in await principal.view.list_branches(session_id)])


@router.post(
    "/sessions/{session_id:text}/branches",
    status_code=201,
    response_model=BranchOut,
    responses=api_responses(400, 404, 409, 413),
)
async def fork_session(principal: Auth, session_id: SessionId, body: ForkIn) -> BranchOut:
    """Fork branch `parent` at `at_seq` as branch `name` (nothing is copied: the branch shares
    the parent's view up to there); append to it and read it with `branch=name`.

    A name the session has is a 409 (`branch-exists`), an unknown parent a 404
    (`branch-not-found`), an `at_seq` that is no message of the parent's view a 400.
    """
    branch = await principal.view.fork_session(session_id, body.name, at_seq=body.at_seq, parent=body.parent)
    return BranchOut.of(branch)


@router.delete(
    "/sessions/{session_id:text}/branches/{name:text}",
    response_model=BranchDeletionOut,
    responses=api_responses(400, 404),
)
async def delete_branch(principal: Auth, session_id: SessionId, name: BranchName) -> BranchDeletionOut:
    """Delete a branch (`main` too; audited). Other branches stay whole: what one shares with
    it stays stored for that one."""
    removed = await principal.view.delete_branch(session_id, name)
    return BranchDeletionOut(session_id=session_id, branch=name, messages=removed)


@router.post(
    "/sessions/{session_id:text}/compact",
    response_model=CompactOut,
    responses=api_responses(400, 404, 409, 413),
)
async def compact(principal: Auth, session_id: SessionId, body: CompactIn) -> CompactOut:
    """Replace, in the view of `branch`, its messages from `from_seq` on with `summary`, in
    one transaction (appends made meanwhile land after it), and return the stored summary.

    The replaced messages stay stored (`raw=true` reads them); each summary message `covers`
    their seq range. With `expect`, nothing is written unless the view still holds exactly
    those seqs (`items` is then null, as when there is nothing to replace). Retrying with
    the same summary ids is safe: the summary stored the first time is returned.
    """
    summary = await principal.view.compact(
        session_id,
        _new_messages(body.summary),
        from_seq=body.from_seq,
        expect=body.expect,
        prune_to=body.prune_to,
        branch=body.branch,
    )
    return CompactOut(items=None if summary is None else [MessageOut.of(m) for m in summary])


# -- search, export, erasure, usage -------------------------------------------------------------


@router.get("/search", response_model=SearchPage, responses=api_responses(400))
async def search(
    principal: Auth,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=1000,
            pattern=NON_BLANK_PATTERN,
            description='Web search syntax: words, "a phrase", or, -word.',
        ),
    ],
    user_id: UserFilter = None,
    session_id: SessionFilter = None,
    agent: AgentFilter = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> SearchPage:
    """Messages matching `q`, best first, each with a plain-text snippet and its hits marked."""
    hits = await principal.view.search(
        q, user_id=user_id, session_id=session_id, agent_name=agent, limit=limit + 1, offset=offset
    )
    more = len(hits) > limit
    return SearchPage(items=[SearchHitOut.of(h) for h in hits[:limit]], next_offset=offset + limit if more else None)


async def jsonl_export(
    view: PostgresSessionStore, *, user_id: str | None, session_id: str | None
) -> AsyncIterator[bytes]:
    """An export as JSON Lines bytes (see :func:`convostore.transfer.export_jsonl`), its first
    line read before it is returned, so that an unknown session or a refused user is an error
    response, not a 200 cut short."""
    lines = export_jsonl(view, user_id=user_id, session_id=session_id)
    try:
        first: str | None = await anext(lines)
    except StopAsyncIteration:
        first = None

    async def body() -> AsyncIterator[bytes]:
        if first is None:
            return
        yield (first + "\n").encode()
        async for line in lines:
            yield (line + "\n").encode()

    return body()


class NdjsonResponse(StreamingResponse):
    """JSON Lines, streamed."""

    media_type = "application/x-ndjson"


@router.get(
    "/export",
    response_class=NdjsonResponse,
    responses={
        200: {
            "description": "One JSON object per line: sessions, their branches and messages (see `convostore import`)."
        },
        **api_responses(400, 404),
    },
)
async def export(principal: Auth, user_id: UserFilter = None, session_id: SessionFilter = None) -> NdjsonResponse:
    """Export as JSON Lines, streamed page by page (lossless; `convostore import` reads it back)."""
    body = await jsonl_export(principal.view, user_id=user_id, session_id=session_id)

    name = "convostore-export.jsonl"
    return NdjsonResponse(body, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.delete("/users/{user_id:text}", response_model=ErasureOut, responses=api_responses(400))
async def erase_user(
    principal: Auth,
    user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID, pattern=NAME_PATTERN)],
) -> ErasureOut:
    """Erase every session and message of a user (right to erasure), in batches; audited."""
    report = await principal.view.delete_user(user_id)
    return ErasureOut(user_id=report.user_id, sessions=report.sessions, messages=report.messages)


@router.get("/usage", response_model=UsagePage, responses=api_responses(400))
async def usage(
    principal: Auth,
    by: Literal["session", "user", "agent", "day"] = "session",
    session_id: SessionFilter = None,
    user_id: UserFilter = None,
    agent: AgentFilter = None,
    since: Annotated[str | None, _time_query("Only turns recorded at or after this time.")] = None,
    until: Annotated[str | None, _time_query("Only turns recorded before this time.")] = None,
) -> UsagePage:
    """Usage totals (turns, requests, tokens, time) grouped by session, user, agent or UTC day."""
    totals = await principal.view.usage(
        by=by,
        session_id=session_id,
        user_id=user_id,
        agent_name=agent,
        since=None if since is None else parse_time(since, "since"),
        until=None if until is None else parse_time(until, "until"),
    )
    return UsagePage(items=[UsageOut.of(t) for t in totals])


# -- health ---------------------------------------------------------------------------------------


@health.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (no database call, no key)."""
    return Health(status="ok")


@health.get("/readyz", response_model=Readiness, responses=responses(503))
async def readyz(request: Request) -> Readiness | Response:
    """Ready when the database answers within a few seconds and the schema is migrated (no key)."""
    store = request.app.state.store
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            status = await store.migration_status()
    except SchemaNotReady:
        return problem_response(503, "schema-not-ready", "The database schema is not ready", _NOT_MIGRATED)
    except (ConvostoreError, TimeoutError):
        return problem_response(
            503, "database-unavailable", "The database is unavailable", "the database does not answer"
        )
    pending = [m for m in status if m.applied_at is None]
    if pending:
        return problem_response(503, "schema-not-ready", "The database schema is not ready", _NOT_MIGRATED)
    return Readiness(status="ready", migrations=len(status))


_NOT_MIGRATED = "the schema has pending migrations or none at all: run `convostore migrate`"
