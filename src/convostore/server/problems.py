"""RFC 9457 problem details: the body of every error the server sends.

convostore's errors map to a status and a problem *type*, a URN naming the kind of error
(``urn:convostore:problem:session-not-found``: an identifier, not a page to fetch). A
client error carries the library's message as ``detail``; a server error carries a fixed
sentence, so that no traceback, SQL or database URL ever reaches a response (the exception
is logged instead).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..errors import (
    AccessDenied,
    BranchConflict,
    BranchExists,
    BranchNotFound,
    ConvostoreError,
    DuplicateMessageId,
    ImportConflict,
    InvalidInput,
    SchemaNotReady,
    SessionExists,
    SessionNotFound,
    SessionOwnershipError,
    StoreClosed,
    StoreTimeout,
    StoreUnavailable,
)

logger = logging.getLogger("convostore.server")

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:convostore:problem:"


class ValidationIssue(BaseModel):
    """One reason a request was refused by validation."""

    model_config = ConfigDict(extra="forbid")

    loc: list[str | int] = Field(description="Where: the part of the request, then the field path.")
    msg: str
    type: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="A URI naming the kind of problem (`about:blank` for plain HTTP errors).")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int = Field(ge=400, le=599, description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request.")
    errors: list[ValidationIssue] | None = Field(
        default=None, description="Validation failures (422 only), one per refused field."
    )


class ApiProblem(Exception):
    """Raised by the server's own code to answer with a problem."""

    def __init__(
        self, status: int, slug: str, title: str, detail: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})


def session_not_found(session_id: str) -> ApiProblem:
    """404 for a session the key cannot see: one that does not exist and another user's are
    answered alike, so that a key cannot tell whether another user's session exists."""
    return ApiProblem(404, "session-not-found", "Session not found", f"session {session_id!r} does not exist")


def unauthorized(detail: str) -> ApiProblem:
    """401 with the challenge RFC 9110 requires."""
    return ApiProblem(401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


# (exception class, status, slug, title), most specific first: the first match wins.
_MAPPING: tuple[tuple[type[ConvostoreError], int, str, str], ...] = (
    (AccessDenied, 403, "forbidden", "Forbidden"),
    (SessionNotFound, 404, "session-not-found", "Session not found"),
    (BranchNotFound, 404, "branch-not-found", "Branch not found"),
    (SessionExists, 409, "session-exists", "Session already exists"),
    (DuplicateMessageId, 409, "duplicate-message-id", "Message id already used"),
    (BranchConflict, 409, "branch-conflict", "Branch conflict"),
    (BranchExists, 409, "branch-exists", "Branch already exists"),
    (ImportConflict, 409, "import-conflict", "Import conflict"),
    (InvalidInput, 400, "invalid-input", "Invalid input"),
    (StoreTimeout, 504, "timeout", "The database did not answer in time"),
    (SchemaNotReady, 503, "schema-not-ready", "The database schema is not ready"),
    (StoreUnavailable, 503, "database-unavailable", "The database is unavailable"),
    (StoreClosed, 503, "database-unavailable", "The database is unavailable"),
)

# Server errors say what happened in general terms only: their messages can name hosts,
# schemas or SQL, which clients have no business seeing.
_SERVER_DETAIL = {
    503: "The database cannot be reached or is not ready; retry later.",
    504: "The database did not answer within the deadline; retry later.",
    500: "The server failed to handle this request; the error has been logged.",
}

_TITLES = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 413: "Content too large"}


def problem_response(
    status: int,
    slug: str | None,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """The problem response itself (*slug* ``None``: ``about:blank``)."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=MEDIA_TYPE)


def _classify(exc: ConvostoreError) -> tuple[int, str, str, str]:
    """(status, slug, title, detail) of one of convostore's errors."""
    for cls, status, slug, title in _MAPPING:
        if isinstance(exc, cls):
            if status >= 500:
                logger.warning("%s: %s", type(exc).__name__, exc)
                return status, slug, title, _SERVER_DETAIL[status]
            return status, slug, title, str(exc)
    logger.error("unexpected %s", type(exc).__name__, exc_info=exc)
    return 500, "internal-error", "Internal server error", _SERVER_DETAIL[500]


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only where and why: pydantic's "input" and "ctx" echo what was sent, which can be large.
    return [
        {"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives the request's path (none for pages)."""
    methods: set[str] = set()
    spec = request.app.openapi()
    for template, operations in spec.get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), request.url.path):
            methods.update(m.upper() for m in operations)
    return sorted(methods)


HtmlErrors = Callable[[Request, int, str, str], Awaitable[Response]]
"""Renders an error of a browser page as a page: (request, status, title, detail)."""


def install(app: FastAPI, *, html: HtmlErrors | None = None, html_prefix: str = "/ui") -> None:
    """Answer every error of *app* with a problem; errors of the pages under *html_prefix*
    with an HTML page made by *html* instead (people read those, not programs)."""

    async def respond(
        request: Request,
        status: int,
        slug: str | None,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> Response:
        path = request.url.path
        if html is not None and (path == html_prefix or path.startswith(html_prefix + "/")):
            return await html(request, status, title, detail)
        return problem_response(status, slug, title, detail, headers=headers, errors=errors)

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return await respond(request, exc.status, exc.slug, exc.title, exc.detail, headers=exc.headers)

    async def on_convostore(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConvostoreError)
        session_id = request.path_params.get("session_id")
        if isinstance(session_id, str) and isinstance(exc, (SessionNotFound, SessionOwnershipError)):
            # The library says whose session it is; a route naming a session does not.
            return await on_problem(request, session_not_found(session_id))
        return await respond(request, *_classify(exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        where = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors[:3])
        detail = f"the request is not valid ({where})" if where else "the request is not valid"
        return await respond(request, 422, "validation-error", "Validation failed", detail, errors=errors)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        title = _TITLES.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}"
        elif exc.status_code == 405:
            # Starlette names the methods of the first route matching the path only; a path
            # served by several routes (GET and POST /v1/sessions) allows all of theirs.
            allowed = _allowed_methods(request)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; use {headers.get('Allow', 'another method')}"
        return await respond(request, exc.status_code, None, title, detail, headers=headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return await respond(request, 500, "internal-error", "Internal server error", _SERVER_DETAIL[500])

    app.add_exception_handler(ApiProblem, on_problem)
    app.add_exception_handler(ConvostoreError, on_convostore)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


_DESCRIPTIONS = {
    400: "The store refused an argument (`invalid-input`) or the paging cursor is not one of ours (`bad-cursor`).",
    401: "No API key, or not a valid one (`unauthorized`); sent with `WWW-Authenticate: Bearer`.",
    403: "The key may not do this: another user's data or another tenant (`forbidden`).",
    404: "No such session, or another user's (`session-not-found`), or no such branch (`branch-not-found`).",
    409: "The request conflicts with what is stored (`session-exists`, `duplicate-message-id`, `branch-exists`, "
    "`branch-conflict`).",
    413: "The request body is larger than the server accepts (`content-too-large`).",
    422: "The request does not match this API's schema (`validation-error`, with `errors`).",
    500: "An unexpected failure (`internal-error`); details are logged, never sent.",
    503: "The database is unreachable or its schema not migrated (`database-unavailable`, `schema-not-ready`).",
    504: "The database did not answer in time (`timeout`).",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of the problem responses *statuses* an operation can send."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": _DESCRIPTIONS[status],
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status == 401:
            entry["headers"] = {
                "WWW-Authenticate": {
                    "description": "The authentication scheme: `Bearer`.",
                    "schema": {"type": "string"},
                }
            }
        out[status] = entry
    return out


# What any operation behind the API key can answer, besides its own statuses.
COMMON: tuple[int, ...] = (401, 403, 422, 500, 503, 504)


def api_responses(*extra: int) -> dict[int | str, dict[str, Any]]:
    """The problem responses of an authenticated operation: :data:`COMMON` and *extra*."""
    return responses(*sorted({*COMMON, *extra}))
