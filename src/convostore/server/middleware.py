"""ASGI middleware of the server: routing on the path as sent, security headers, a bound on
request bodies, and an OpenTelemetry span per request.

Written as plain ASGI (not Starlette's ``BaseHTTPMiddleware``) so that streamed responses
(the export) pass through without being buffered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from .problems import MEDIA_TYPE, TYPE_BASE

try:  # an optional dependency, as for the store's own spans (convostore._telemetry)
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    TELEMETRY = True
except ImportError:  # installs without the telemetry extra
    TELEMETRY = False

# No inline script or style anywhere: stored text can only ever be text.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
STATIC_PREFIX = "/ui/static/"


class SegmentPaths:
    """Routes on the path as the client sent it, one percent-encoded segment at a time.

    ASGI servers hand the application a decoded ``path``, in which ``/sessions/a%2Fb`` and
    ``/sessions/a/b`` are the same string: an id holding ``/`` would then reach another
    route, or another session (``report%2Fdelete`` read as the delete page of ``report``).
    Here ``path`` becomes ``raw_path`` with each segment decoded and re-encoded canonically
    (``quote(segment, safe='')``), so a segment's own ``/`` and ``%`` stay escaped and
    ``{id:text}`` routes decode exactly one segment (see :mod:`.schemas`). A path that is not
    UTF-8 once decoded names no id at all: a 400 problem.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path")
        if raw is None:  # a server without raw_path: its decoded path is all there is
            raw = quote(scope["path"]).encode()
        segments = []
        for segment in bytes(raw).split(b"/"):
            decoded = unquote_to_bytes(segment)
            try:
                decoded.decode("utf-8")
            except UnicodeDecodeError:
                await _problem(send, 400, "invalid-input", "Invalid input", "the path is not UTF-8 once decoded")
                return
            segments.append(quote(decoded, safe=""))
        scope["path"] = "/".join(segments)
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds the security headers to every response, and keeps private data out of caches:
    everything but the static files is ``Cache-Control: no-store``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in _HEADERS if h[0] not in present]
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"public, max-age=3600" if static else b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses request bodies larger than *limit* bytes with a 413 problem, before the
    application reads them (by ``Content-Length``) or as soon as they grow past it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope["headers"], b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _too_large(send, self.limit)
            return
        # Without a trustworthy length (chunked), the body is read here up to the limit and
        # replayed: bodies are small by construction, and no handler sees a partial one.
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    await _too_large(send, self.limit)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


async def _too_large(send: Send, limit: int) -> None:
    await _problem(
        send, 413, "content-too-large", "Content too large", f"the request body is larger than {limit} bytes"
    )


async def _problem(send: Send, status: int, slug: str, title: str, detail: str) -> None:
    body = json.dumps({"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail}).encode()
    headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def route_template(scope: Scope) -> str | None:
    """The template of the route that handled the request (``/v1/sessions/{session_id}``),
    once routing has happened; ``None`` for a path no route matched."""
    route: Any = scope.get("route")
    path = getattr(route, "path_format", None)  # without converters: {session_id}, not {session_id:text}
    if isinstance(path, str) and getattr(route, "endpoint", None) is not None:
        return path
    if scope["path"].startswith(STATIC_PREFIX):
        return STATIC_PREFIX + "{path}"  # the static files' mount
    return None


class RequestSpans:
    """An OpenTelemetry span per request, ``HTTP <method> <route template>``, the parent of
    the store's spans for the calls the request makes. A no-op without opentelemetry-api."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not TELEMETRY or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        # Looked up per request: an application that sets its provider after startup is heard.
        tracer = trace.get_tracer("convostore.server", __version__)
        status = 500  # if the application fails before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        attributes = {"http.request.method": method}
        with tracer.start_as_current_span(f"HTTP {method}", kind=SpanKind.SERVER, attributes=attributes) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = route_template(scope)
                if route is not None:
                    # Named after the template, not the path: one name per endpoint, however
                    # many sessions there are.
                    span.update_name(f"HTTP {method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
