"""What a connection sets, and a new pool finds out, on Citus."""

from __future__ import annotations

from typing import Any

from .._sql import HAS_CITUS, IS_DISTRIBUTED
from .._types import Connection


async def is_distributed(conn: Connection, table: str) -> bool:
    """Whether *table* (the sessions table, schema-qualified) is distributed by Citus."""
    citus = await conn.fetchval(HAS_CITUS)
    return bool(citus and await conn.fetchval(IS_DISTRIBUTED, table))


# On a Citus node, catalog queries get a filter that hides shards, costly per row: asyncpg's
# type introspection (once per connection, for the array parameters of the append) then takes
# 0.5-1.5 s instead of 10 ms. convostore's statements never list the catalog, so its sessions
# see shards as they are. On a node that holds shards itself (a single-node cluster, or a
# connection straight to a worker), statements are planned with each call's values: there
# Citus adds a copy of a reused generic plan's local plan to it on every run (see
# _sql.FIT_TO_CITUS), about 46 KB per read of a session row measured on 13.2.2. Elsewhere
# the block sets nothing.
CITUS_SESSION = """
DO $citus$
BEGIN
    IF current_setting('citus.version', true) IS NULL OR to_regclass('pg_catalog.pg_dist_placement') IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('citus.show_shards_for_app_name_prefixes', '*', false);
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement
                WHERE groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)) THEN
        PERFORM set_config('plan_cache_mode', 'force_custom_plan', false);
    END IF;
END
$citus$
"""


def connection_init(user_init: Any, *, citus: bool) -> Any:
    """The pool's ``init`` hook, run once on each new connection: the Citus settings (not
    through pgbouncer, whose server connections are shared: there it would not stay with the
    session), then the caller's own ``init`` from ``connect_kwargs``, if any."""
    if not citus:
        return user_init

    async def init(conn: Connection) -> None:
        await conn.execute(CITUS_SESSION)
        if user_init is not None:
            await user_init(conn)

    return init
