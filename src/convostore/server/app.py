"""The application: the API, the browser, their middleware, and ``convostore serve``."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .._version import __version__
from ..errors import ConvostoreError
from ..store import PostgresSessionStore
from . import api, problems, ui
from .auth import Authenticator, SignIns
from .auth import session_secret as _session_secret
from .middleware import (
    BodyLimit,
    CachedReadiness,
    FailedAuthLimit,
    RequestSpans,
    SecurityHeaders,
    SegmentPaths,
    TokenBuckets,
)

logger = logging.getLogger("convostore.server")

MAX_BODY = 16 * 1024 * 1024  # bytes of one request body

DESCRIPTION = """\
AI agents' conversations kept in PostgreSQL: sessions, their ordered messages, search,
export, erasure and usage. Every `/v1` operation needs an API key (`convostore keys create`)
sent as `Authorization: Bearer csk_...`; a key acts in its tenant, and for its user when it
has one. Errors are RFC 9457 problem details (`application/problem+json`). The conversation
browser is at `/ui`.
"""


def create_app(
    store: PostgresSessionStore,
    *,
    key_cache_ttl: float = 30.0,
    key_cache_size: int = 4096,
    max_body: int = MAX_BODY,
    owns_store: bool = False,
    session_secret: str | bytes | None = None,
    failed_auth_burst: float = 10.0,
    failed_auth_rate: float = 0.5,
    ready_ttl: float = 1.0,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The ASGI application serving *store*: the API under ``/v1``, the browser under ``/ui``,
    ``/healthz``, ``/readyz`` and ``/openapi.json``.

    A verified key is remembered for *key_cache_ttl* seconds (0: every request is checked
    against the database), at most *key_cache_size* of them; a refused one for 10 seconds.
    A client address may fail to authenticate *failed_auth_burst* times at once, then
    *failed_auth_rate* times a second (429 otherwise). ``/readyz`` answers from its last
    answer for *ready_ttl* seconds. The browser's sign-in tokens are signed with
    *session_secret* (default ``$CONVOSTORE_SESSION_SECRET``, else random for this process).
    *clock* (``time.time``) is what all of them count time with. Request bodies are limited
    to *max_body* bytes. Starting the application opens the store's pool in the server's
    event loop (a store that is not ready yet only makes ``/readyz`` answer 503); with
    *owns_store*, stopping it closes the store.
    """
    secret = _session_secret(session_secret)  # refused before anything starts

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await store.connect()
        except ConvostoreError as exc:
            # Serve anyway: /readyz reports it, and each call retries once the database is back.
            logger.warning("the database is not ready (%s); /readyz answers 503 until it is", exc)
        try:
            yield
        finally:
            if owns_store:
                await store.close()

    options: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:
        # FastAPI >= 0.16x traces requests itself; the server's own spans (RequestSpans) are
        # kept instead, so that each request is one span, named and shaped the same way
        # whatever the FastAPI version.
        options["telemetry"] = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    app = FastAPI(
        title="convostore",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # The interactive docs load scripts from a CDN, which the Content-Security-Policy
        # (rightly) refuses; /openapi.json is there for tools.
        docs_url=None,
        redoc_url=None,
        **options,
    )
    app.state.store = store
    auth = Authenticator(store, ttl=key_cache_ttl, size=key_cache_size, clock=clock)
    app.state.auth = auth
    app.state.sign_ins = SignIns(secret, lifetime=ui.SIGN_IN_LIFETIME, clock=clock)
    problems.install(app, html=ui.error_page)
    app.include_router(api.router)
    app.include_router(api.health)
    ui.mount(app)
    # Outermost last: the span covers everything, then the headers, then the cached
    # readiness, the limit on failed authentications and the body limit, then the path
    # routed on.
    app.add_middleware(SegmentPaths)
    app.add_middleware(BodyLimit, limit=max_body)
    buckets = TokenBuckets(burst=failed_auth_burst, rate=failed_auth_rate, clock=clock)
    app.add_middleware(FailedAuthLimit, buckets=buckets, remembers=auth.remembers)
    app.add_middleware(CachedReadiness, ttl=ready_ttl, clock=clock)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestSpans)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, completed: the problem schema, JSON-valued query parameters, and
    optional parameters without the ``null`` a query string cannot carry."""
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    problem = problems.Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                _tidy_parameter(parameter)
    return spec


def _tidy_parameter(parameter: dict[str, Any]) -> None:
    schema = parameter.get("schema", {})
    any_of = schema.get("anyOf")
    if not parameter.get("required") and isinstance(any_of, list) and {"type": "null"} in any_of:
        rest = [s for s in any_of if s != {"type": "null"}]
        if len(rest) == 1:
            extra = {k: v for k, v in schema.items() if k != "anyOf"}
            schema = parameter["schema"] = {**rest[0], **extra}
    if schema.pop("x-convostore-json-object", False):
        # A JSON object in the query string: described as content, so that tools send JSON.
        parameter.pop("schema")
        parameter["content"] = {
            "application/json": {"schema": {"type": "object", "maxProperties": 16, "additionalProperties": True}}
        }


def serve(
    *,
    database_url: str | None = None,
    schema: str | None = None,
    tenant: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    debug: bool = False,
) -> None:
    """Serve the API and the browser with uvicorn until interrupted (``convostore serve``).

    The store only checks the schema (it never migrates: run ``convostore migrate``). Logs
    go through :mod:`logging` (``convostore.server`` and uvicorn's loggers), at INFO, or
    DEBUG with *debug*; nothing is printed.
    """
    import uvicorn

    level = logging.DEBUG if debug else logging.INFO
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for name in ("convostore.server", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(level)
    store = PostgresSessionStore(database_url, schema=schema, tenant=tenant, apply_migrations=False)
    app = create_app(store, owns_store=True)
    logger.info("serving convostore %s on http://%s:%d (tenant %s, schema %s)", __version__, host, port,
                store.tenant, store.schema)  # fmt: skip
    # log_config=None: uvicorn logs through the logging configuration above, not its own.
    uvicorn.run(app, host=host, port=port, log_config=None, proxy_headers=True, server_header=False)
