"""Full-text search over stored messages, and its opt-in index."""

from __future__ import annotations

import asyncio
import logging

from . import _validate as check
from ._scope import Scope
from ._sql import quote_ident
from ._types import Connection
from .errors import InvalidInput
from .models import HIT_END, HIT_START, SearchHit

logger = logging.getLogger("convostore")


async def search(
    s: Scope,
    query: str,
    session_id: str | None,
    user_id: str | None,
    agent_name: str | None,
    limit: int,
    offset: int,
    snippet_words: int,
    all_tenants: bool,
) -> list[SearchHit]:
    """The store's ``search`` (documented there)."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput("query must be a non-empty string")
    check.check_text(query, "query")
    if len(query) > 1000:
        raise InvalidInput("query is longer than 1,000 characters")
    sid = check.optional_identifier(session_id, "session_id")
    uid = s.acting_user(user_id)
    agent = check.optional_identifier(agent_name, "agent_name")
    n = check.limit(limit)
    skip = check.limit(offset, "offset")
    words = check.limit(snippet_words, "snippet_words")
    if not n or n > 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    if not words or words > 200:
        raise InvalidInput("snippet_words must be between 1 and 200")
    tenant = await s.tenant_for(all_tenants)
    args = (tenant, uid, sid, agent, query.replace("\x00", ""), n, skip or 0, words, HIT_START, HIT_END)
    rows = await s.run("search", lambda c: c.fetch(s.queries.search, *args), session_id=sid, all_tenants=all_tenants)
    return [
        SearchHit(
            tenant=r["tenant_id"],
            session_id=r["session_id"],
            seq=r["seq"],
            message_id=r["id"],
            role=r["role"],
            branch=r["branch"],
            user_id=r["user_id"],
            created_at=r["created_at"],
            rank=float(r["rank"]),
            snippet=r["snippet"],
        )
        for r in rows
    ]


async def _index_state(s: Scope, what: str) -> bool | None:
    """Whether the index is there and valid (``False``: left invalid by a build; ``None``: absent)."""
    state: bool | None = await s.runner.run(
        what, lambda c: c.fetchval(s.queries.search_index_state, quote_ident(s.schema))
    )
    return state


async def search_index(s: Scope) -> bool:
    """The store's ``search_index`` (documented there)."""
    return bool(await _index_state(s, "search_index"))


async def create_search_index(s: Scope, build_timeout: float | None) -> bool:
    """The store's ``create_search_index`` (documented there)."""
    if build_timeout is not None and not (isinstance(build_timeout, (int, float)) and 0 < build_timeout < 10**7):
        raise InvalidInput("build_timeout must be positive seconds or None")
    state = await _index_state(s, "create_search_index")
    if state:
        return False

    async def build(conn: Connection) -> None:
        # No statement deadline of the session's may cut the build short.
        await conn.execute("SET statement_timeout = 0")
        try:
            if state is False:  # left invalid by an interrupted build
                await conn.execute(s.queries.search_index_drop, timeout=build_timeout)
            await conn.execute(s.queries.search_index_create, timeout=build_timeout)
        finally:
            await conn.execute("RESET statement_timeout")

    loop = asyncio.get_running_loop()
    await s.runner.run(
        "create_search_index", build, deadline=loop.time() + (10**9 if build_timeout is None else build_timeout)
    )
    logger.info("built the full-text search index of schema %s", s.schema)
    return True


async def drop_search_index(s: Scope) -> bool:
    """The store's ``drop_search_index`` (documented there)."""
    if await _index_state(s, "drop_search_index") is None:
        return False
    await s.runner.run("drop_search_index", lambda c: c.execute(s.queries.search_index_drop))
    logger.info("dropped the full-text search index of schema %s", s.schema)
    return True
