"""ASGI middleware of the server: routing on the path as sent, security headers, a bound on
request bodies, a limit on failed authentications, a cheap ``/readyz``, and an
OpenTelemetry span per request.

Written as plain ASGI (not Starlette's ``BaseHTTPMiddleware``) so that streamed responses
(the export) pass through without being buffered.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
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


async def _problem(
    send: Send, status: int, slug: str, title: str, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail}).encode()
    headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class TokenBuckets:
    """A token bucket per client address: *burst* tokens at most, *rate* more per second of
    *clock*, for at most *size* addresses (the least recently seen are forgotten: a full
    bucket again). In memory, per process."""

    def __init__(
        self, *, burst: float, rate: float, size: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        self.burst = burst
        self.rate = rate
        self.size = size
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, as of when

    def _level(self, address: str) -> float:
        tokens, at = self._buckets.get(address, (self.burst, self.clock()))
        # A clock stepping back refills nothing (and takes nothing away).
        return min(self.burst, tokens + max(0.0, self.clock() - at) * self.rate)

    def wait(self, address: str) -> float:
        """Seconds until *address* has a token (0: it has one now)."""
        missing = 1.0 - self._level(address)
        return 0.0 if missing <= 0 else (math.inf if self.rate <= 0 else missing / self.rate)

    def spend(self, address: str) -> None:
        """Take a token from *address*'s bucket (down to none)."""
        self._buckets[address] = (max(0.0, self._level(address) - 1.0), self.clock())
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.size:
            self._buckets.popitem(last=False)


LOGIN_PATH = "/ui/login"


class FailedAuthLimit:
    """Limits failed authentications per client address (as the ASGI server saw it: behind a
    proxy, have the server trust its forwarded headers). Each answer 401 to a request that
    presented a key (``Authorization``, the sign-in form) spends a token of *buckets*; an
    address without one is answered 429 with ``Retry-After`` before the application runs,
    unless its key was verified recently (*remembers*: no round trip to spare)."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets, remembers: Callable[[str], bool]) -> None:
        self.app = app
        self.buckets = buckets
        self.remembers = remembers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = _header(scope["headers"], b"authorization")
        login = scope["method"] == "POST" and scope["path"] == LOGIN_PATH
        if authorization is None and not login:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else ""
        wait = self.buckets.wait(address)
        if wait > 0:
            scheme, _, token = (authorization or "").partition(" ")
            if login or scheme.lower() != "bearer" or not self.remembers(token.strip()):
                retry = str(min(math.ceil(wait), 3600)).encode()
                detail = "too many failed authentications from this address; try again later"
                await _problem(send, 429, "too-many-requests", "Too many requests", detail, [(b"retry-after", retry)])
                return

        async def count_failures(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.buckets.spend(address)
            await send(message)

        await self.app(scope, receive, count_failures)


READY_PATH = "/readyz"


class CachedReadiness:
    """Answers ``/readyz`` from the last answer for *ttl* seconds of *clock*: a probe costs
    at most one database round trip a second, however often (and by whom, it needs no key)
    it is asked; concurrent probes wait for the one in flight."""

    def __init__(self, app: ASGIApp, ttl: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.ttl = ttl
        self.clock = clock
        self._answer: tuple[float, list[Message]] | None = None
        self._lock = asyncio.Lock()

    def _fresh(self) -> list[Message] | None:
        if self._answer is not None and self._answer[0] <= self.clock() < self._answer[0] + self.ttl:
            return self._answer[1]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != READY_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        answer = self._fresh()
        if answer is None:
            async with self._lock:
                answer = self._fresh()
                if answer is None:
                    messages: list[Message] = []

                    async def keep(message: Message) -> None:
                        messages.append(message)

                    await self.app(scope, receive, keep)
                    self._answer = (self.clock(), messages)
                    answer = messages
        for message in answer:
            await send(message)


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
