"""Sending a session's calls straight to the Citus node holding it (``route_to_nodes``), and
keeping the shard map that says which node that is (see :mod:`convostore.citus`)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from .._failures import describe, redact
from .._pools import Pools
from .._sql import SHARD_MAP
from .._types import Connection
from ._shards import REFRESH, Node, ShardMap

logger = logging.getLogger("convostore")

SHUN = 30.0
"""Seconds a node that failed a routed call is left out."""


@dataclass
class _LoopNodes:
    """What routing keeps per event loop: the nodes whose calls go through the main pool for
    now (until a monotonic time), and the task reading the shard map again."""

    shunned: dict[Node, float] = field(default_factory=dict)
    refreshing: asyncio.Task[None] | None = None


class Nodes:
    """The shard map of the distributed tables, shared by every loop (appends of one node's
    sessions share a call), and with ``route_to_nodes`` a pool per node in each loop."""

    def __init__(self, pools: Pools) -> None:
        self._pools = pools
        # The sessions table whose shards' map is read (on distributed tables; set when a pool
        # opens), and its map.
        self.route_table: str | None = None
        self.routes: ShardMap | None = None
        self._routes_read = 0.0
        self._routes_database: str | None = None

    def _loop(self) -> _LoopNodes:
        return self._pools.loop_local("nodes", _LoopNodes)

    def node_of(self, session_id: str) -> Node | None:
        """The node holding *session_id* by the shard map (read again when it is older than
        :data:`REFRESH` seconds); ``None`` for the main pool's node, or without a map."""
        routes = self.routes
        if routes is None:
            return None
        self._refresh_if_stale()
        return routes.node_for(session_id)

    def _refresh_if_stale(self) -> None:
        now = time.monotonic()
        if self.route_table is None or now - self._routes_read <= REFRESH:
            return
        state, here = self._pools.state(), self._loop()
        if state.pool is not None and (here.refreshing is None or here.refreshing.done()):
            self._routes_read = now
            here.refreshing = asyncio.ensure_future(self._refresh_routes(state.pool))

    def node_pools(self) -> dict[Node, asyncpg.Pool]:
        """This loop's pools to the nodes calls were routed to."""
        return dict(self._pools.state().nodes)

    def shunned(self, node: Node) -> bool:
        """Whether *node*'s calls go through the main pool for now (it failed one)."""
        return self._loop().shunned.get(node, 0.0) > time.monotonic()

    async def read(self, conn: Connection) -> None:
        """Read the shard map of :attr:`route_table` on *conn* (a connection of the main pool)."""
        rows = await conn.fetch(SHARD_MAP, self.route_table)
        self._routes_database = rows[0]["database"] if rows else None
        self.routes = ShardMap.from_rows(
            [(r["low"], r["high"], None if r["here"] else (r["host"], r["port"])) for r in rows]
        )
        self._routes_read = time.monotonic()

    async def _refresh_routes(self, pool: asyncpg.Pool) -> None:
        try:
            async with pool.acquire() as conn:
                await self.read(conn)
        except Exception as exc:  # the map in use stays (a stale map only slows calls down)
            logger.debug("reading the shard map failed: %s", self._pools.scrub(describe(exc)))

    async def pool_for(self, session_id: str, budget: float | None) -> tuple[Node | None, asyncpg.Pool | None]:
        """The node holding *session_id* and this loop's pool to it, if calls are routed and
        that node is not shunned; else ``(None, None)`` (the main pool serves the call)."""
        state = self._pools.state()
        if self.routes is None or state.pool is None or not self._pools.options.route_to_nodes:
            return None, None  # the main pool opens first (and reads the map)
        node = self.node_of(session_id)
        if node is None or self._loop().shunned.get(node, 0.0) > time.monotonic():
            return None, None
        pool = state.nodes.get(node)
        if pool is None:
            try:
                # No connection is made until a call needs one (min_size 0): opening is immediate.
                where = {"host": node[0], "port": node[1], "database": self._routes_database}
                pool = self._pools.create_pool(await self._pools.resolve_url(), budget, min_size=0, **where)
                await pool
            except Exception as exc:
                self.shun(node, exc)
                return None, None
            pool = state.nodes.setdefault(node, pool)
        return node, pool

    def shun(self, node: Node, exc: BaseException) -> None:
        """Send *node*'s calls through the main pool for a while: it failed to serve one (could
        not be reached, lost the connection, or had no free connection in time)."""
        self._loop().shunned[node] = time.monotonic() + SHUN
        logger.info(
            "%s:%s: %s; its sessions' calls go through %s for %.0fs",
            *node,
            self._pools.scrub(describe(exc)),
            redact(self._pools.url or ""),
            SHUN,
        )
