"""Operators' statistics: counts, per-agent totals, table and index sizes."""

from __future__ import annotations

from ._scope import Scope
from ._types import Connection
from .models import AgentStats, StoreStats, TableSize


async def stats(s: Scope, all_tenants: bool) -> StoreStats:
    """The store's ``stats`` (documented there)."""
    tenant = await s.tenant_for(all_tenants)

    async def read(conn: Connection) -> StoreStats:
        totals = await conn.fetchrow(s.queries.stats, tenant, s.user)
        agents = await conn.fetch(s.queries.stats_by_agent, tenant, s.user)
        sizes = await conn.fetch(s.queries.stats_sizes, s.schema)
        assert totals is not None
        return StoreStats(
            sessions=totals["sessions"],
            messages=totals["messages"],
            users=totals["users"],
            sessions_with_expiry=totals["with_expiry"],
            oldest_session=totals["oldest_session"],
            newest_activity=totals["newest_activity"],
            by_agent=tuple(AgentStats(r["agent_name"], r["sessions"], r["messages"]) for r in agents),
            tables=tuple(TableSize(r["name"], r["table_bytes"], r["index_bytes"]) for r in sizes),
        )

    return await s.run("stats", read, all_tenants=all_tenants)
