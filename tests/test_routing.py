"""Routing a session's appends and reads straight to the Citus node holding it
(``route_to_nodes``): the hash is PostgreSQL's, the map is the cluster's, and a stale map or
an unreachable node still serves every call, through the coordinator."""

from __future__ import annotations

import asyncio
import random
import string
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest

from convostore import DuplicateMessageId, NewMessage, PostgresSessionStore
from convostore.citus._shards import ShardMap, hashtext


async def test_the_hash_is_postgresqls_hashtext(store: PostgresSessionStore) -> None:
    values = ["", "a", "ab", "abc", "abcd", "héllo wörld", "日本語のセッション"]
    rng = random.Random(7)
    for n in range(40):
        values.append("".join(rng.choice(string.printable) for _ in range(n)))
        values.append("".join(chr(rng.randint(32, 0x2FFF)) for _ in range(n)))
    values += [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(200)]
    rows = await store.pool.fetch("SELECT v, hashtext(v) AS h FROM unnest($1::text[]) AS v", values)
    assert [hashtext(r["v"]) for r in rows] == [r["h"] for r in rows]


def test_a_map_finds_the_range_holding_a_hash() -> None:
    a, b = ("10.0.0.1", 5432), ("10.0.0.2", 5432)
    routes = ShardMap.from_rows([(0, 2**31 - 1, b), (-(2**31), -1, a)])
    for sid in (str(uuid.uuid4()) for _ in range(100)):
        assert routes.node_for(sid) == (a if hashtext(sid) < 0 else b)
    assert hashtext("x") not in range(0, 11)
    assert ShardMap.from_rows([(0, 10, a)]).node_for("x") is None  # no range holds it: the main pool


async def _the_server_as_the_only_node(store: PostgresSessionStore, database_url: str) -> ShardMap:
    """On one node: a map sending every session to that same server as if it were a node (the
    pools to nodes, their connections and the fallback are the same code as on a cluster)."""
    parts = urlsplit(database_url)
    host = parts.hostname or dict(parse_qsl(parts.query))["host"]  # or the embedded server's socket directory
    port = int(await store.pool.fetchval("SHOW port"))
    return ShardMap.from_rows([(-(2**31), 2**31 - 1, (host, port))])


@pytest.fixture
async def routed(store: PostgresSessionStore, database_url: str) -> AsyncIterator[PostgresSessionStore]:
    """A second store on the same schema, routing its calls (on distributed tables)."""
    async with PostgresSessionStore(database_url, schema=store.schema, route_to_nodes=True) as s:
        yield s


async def test_routed_calls_reach_the_node_holding_the_session(
    store: PostgresSessionStore, routed: PostgresSessionStore
) -> None:
    sessions = [(await routed.create_session(f"u{i % 3}", "a")).id for i in range(24)]
    for round_ in range(3):
        for sid in sessions:
            await routed.add_messages(sid, [{"role": "user", "content": f"{sid}-{round_}-{k}"} for k in range(2)])
    for sid in sessions:
        got = [m.content for m in await routed.get_messages(sid)]
        assert got == [f"{sid}-{r}-{k}" for r in range(3) for k in range(2)]
        assert [m.content for m in await store.get_messages(sid)] == got
    runner = routed._scope.runner
    if not store._scope.runner.distributed:
        assert runner.route_table is None  # nothing to route on one node
        assert runner.routes is None
        return
    # Every session's node per the map is the node holding its shard per Citus.
    nodes = {
        r["sid"]: (r["nodename"], r["nodeport"])
        for r in await store.pool.fetch(
            "SELECT sid, nodename, nodeport FROM unnest($2::text[]) AS sid "
            "JOIN pg_dist_shard_placement p ON p.shardid = get_shard_id_for_distribution_column($1::regclass, sid)",
            f'"{store.schema}".agent_sessions',
            sessions,
        )
    }
    routes = runner.routes
    assert routes is not None
    assert {sid: routes.node_for(sid) for sid in sessions} == nodes
    # The calls went there: each node holding one of the sessions has a pool with connections.
    pools = runner.node_pools()
    assert set(pools) == set(nodes.values())
    assert all(pool.get_size() > 0 for pool in pools.values())


async def test_a_stale_map_or_an_unreachable_node_still_serves_every_call(
    store: PostgresSessionStore, routed: PostgresSessionStore, database_url: str
) -> None:
    sid = (await routed.create_session("u", "a")).id
    await routed.add_message(sid, "user", "first")
    runner = routed._scope.runner
    routes = runner.routes
    if routes is None:
        routes = await _the_server_as_the_only_node(store, database_url)
    else:
        # Stale: every shard moved to the other node (as after a rebalance). The node reached
        # runs the function's statements where the shard is.
        nodes = sorted({n for n in routes.nodes if n is not None})
        swapped = {n: nodes[(i + 1) % len(nodes)] for i, n in enumerate(nodes)}
        routes = ShardMap(routes.lows, routes.highs, tuple(None if n is None else swapped[n] for n in routes.nodes))
    runner.nodes.routes = routes
    await routed.add_message(sid, "assistant", "second")
    assert routes.node_for(sid) in runner.node_pools()
    assert [m.content for m in await routed.get_messages(sid)] == ["first", "second"]
    # Unreachable: nothing listens there. The attempt fails before sending, the node is left
    # out for a while and the call is retried through the main pool (the coordinator), once.
    runner.nodes.routes = ShardMap(routes.lows, routes.highs, tuple(("127.0.0.1", 1) for _ in routes.nodes))
    await routed.add_message(sid, "user", "third")
    assert [m.content for m in await routed.get_messages(sid)] == ["first", "second", "third"]
    assert runner.shunned(("127.0.0.1", 1))
    assert [m.seq for m in await store.get_messages(sid)] == [1, 2, 3]


async def test_appends_while_their_shard_moves_are_kept_once_and_in_order(
    store: PostgresSessionStore, routed: PostgresSessionStore
) -> None:
    """A shard moves to another node (a rebalance) and back, then splits in two, one half
    going to the other node, while appends to its sessions go on, through the coordinator and
    routed by a map that the moves make stale: every acknowledged message is stored once, in
    the order it was acknowledged, and no call fails."""
    if not store._scope.runner.distributed:
        pytest.skip("moving a shard needs distributed tables (CONVOSTORE_DISTRIBUTE=1 on a Citus coordinator)")
    table = f'"{store.schema}".agent_sessions'
    first = str(uuid.uuid4())
    placement = await store.pool.fetchrow(
        "SELECT shardid, nodename || ':' || nodeport AS node FROM pg_dist_shard_placement "
        "WHERE shardid = get_shard_id_for_distribution_column($1::regclass, $2::text)",
        table,
        first,
    )
    assert placement is not None
    shard, home = placement["shardid"], placement["node"]
    others = await store.pool.fetch(
        "SELECT nodename || ':' || nodeport AS node FROM pg_dist_node "
        "WHERE isactive AND noderole = 'primary' AND shouldhaveshards AND nodename || ':' || nodeport <> $1",
        home,
    )
    if not others:
        pytest.skip("moving a shard needs a second worker")
    candidates = [str(uuid.uuid4()) for _ in range(2000)]
    same_shard = await store.pool.fetch(
        "SELECT sid FROM unnest($2::text[]) AS sid WHERE get_shard_id_for_distribution_column($1::regclass, sid) = $3",
        table,
        candidates,
        shard,
    )
    sessions = [first, *[r["sid"] for r in same_shard[:5]]]
    for sid in sessions:
        await store.create_session("u", "a", session_id=sid)
    acknowledged: dict[str, list[str]] = {sid: [] for sid in sessions}
    moving = True

    async def writer(on: PostgresSessionStore, sid: str) -> None:
        i = 0
        while moving or i < 5:
            text = f"{sid[:8]}-{i}"
            await on.add_message(sid, "user", text)
            acknowledged[sid].append(text)
            i += 1

    writers = [asyncio.ensure_future(writer(store if k % 2 else routed, sid)) for k, sid in enumerate(sessions)]
    try:
        await asyncio.sleep(0.3)
        for source, target in ((home, others[0]["node"]), (others[0]["node"], home)):
            (src_host, src_port), (dst_host, dst_port) = (n.rsplit(":", 1) for n in (source, target))
            await store.pool.execute(
                "SELECT citus_move_shard_placement($1, $2, $3, $4, $5, shard_transfer_mode => 'block_writes')",
                shard,
                src_host,
                int(src_port),
                dst_host,
                int(dst_port),
            )
            await asyncio.sleep(0.3)
        hashes = await store.pool.fetchrow(
            "SELECT shardminvalue::bigint AS low, shardmaxvalue::bigint AS high FROM pg_dist_shard WHERE shardid = $1",
            shard,
        )
        assert hashes is not None
        nodes = {
            r["node"]: r["nodeid"]
            for r in await store.pool.fetch("SELECT nodename || ':' || nodeport AS node, nodeid FROM pg_dist_node")
        }
        await store.pool.execute(
            "SELECT citus_split_shard_by_split_points($1, ARRAY[$2], ARRAY[$3, $4]::int[], "
            "shard_transfer_mode => 'block_writes')",
            shard,
            str((hashes["low"] + hashes["high"]) // 2),
            nodes[home],
            nodes[others[0]["node"]],
        )
        await asyncio.sleep(0.3)
        assert not await store.pool.fetchval("SELECT EXISTS (SELECT 1 FROM pg_dist_shard WHERE shardid = $1)", shard)
    finally:
        moving = False
        await asyncio.gather(*writers)
    for sid in sessions:
        stored = [m.content for m in await store.get_messages(sid)]
        assert stored == acknowledged[sid]
        assert len(stored) >= 5


@pytest.mark.parametrize("route", [False, True], ids=["through the coordinator", "routed"])
async def test_appends_of_one_nodes_sessions_share_a_call_that_writes_the_shards(
    store: PostgresSessionStore, database_url: str, route: bool
) -> None:
    """On distributed tables, concurrent appends to sessions held by one node leave in one
    call (delegated to that node, or sent straight there), which writes the shards' own
    tables there; each session keeps its order and every message is stored once."""
    if not store._scope.runner.distributed:
        pytest.skip("needs distributed tables (CONVOSTORE_DISTRIBUTE=1 on a Citus coordinator)")
    calls: list[list[str]] = []

    def log(record: Any) -> None:
        if "convostore_append" in record.query:
            calls.append(list(record.args[6]))  # p_sessions

    async def attach(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(log)

    async with PostgresSessionStore(
        database_url, schema=store.schema, route_to_nodes=route, connect_kwargs={"init": attach}
    ) as writer:
        sessions = [(await writer.create_session(f"u{i}", "a")).id for i in range(32)]

        async def append(sid: str) -> None:
            for i in range(10):
                await writer.add_message(sid, "user", f"{sid}:{i}")

        await asyncio.gather(*(append(sid) for sid in sessions))
        node = {
            r["sid"]: r["node"]
            for r in await store.pool.fetch(
                "SELECT sid, nodeport AS node FROM unnest($2::text[]) AS sid "
                "JOIN pg_dist_shard_placement p ON p.shardid = get_shard_id_for_distribution_column($1::regclass, sid)",
                f'"{store.schema}".agent_sessions',
                sessions,
            )
        }
        shared = [c for c in calls if len(set(c)) > 1]
        assert shared, "no call carried more than one session"
        assert all(len({node[sid] for sid in c}) == 1 for c in shared), "a call mixed sessions of two nodes"
        for sid in sessions:
            assert [m.content for m in await writer.get_messages(sid)] == [f"{sid}:{i}" for i in range(10)]
        # The writes went to the shards' tables: their statements are prepared on the node.
        if route:
            prepared: list[str] = []
            for pool in writer._scope.runner.node_pools().values():
                held = [await pool.acquire() for _ in range(pool.get_size())]  # every connection it has
                for conn in held:
                    prepared += await conn.fetchval("SELECT array_agg(name) FROM pg_prepared_statements") or []
                    await pool.release(conn)
            assert any(name.startswith("cs12_write1_") for name in prepared), prepared


async def test_caller_chosen_ids_are_stored_once_in_calls_by_node(store: PostgresSessionStore) -> None:
    """On distributed tables, appends with ids the caller chose (as the Agents SDK session
    sends) share calls by node too: sent again, concurrently, they return the rows stored the
    first time and store nothing; an id sent again with another message is refused."""
    if not store._scope.runner.distributed:
        pytest.skip("needs distributed tables (CONVOSTORE_DISTRIBUTE=1 on a Citus coordinator)")
    sessions = [str(uuid.uuid4()) for _ in range(24)]

    def batch(sid: str, i: int) -> list[NewMessage]:
        return [NewMessage(role="user", content=f"{sid}:{i}:{k}", id=f"m{i}-{k}") for k in range(2)]

    async def write(sid: str) -> None:
        for i in range(4):
            await store.add_messages(sid, batch(sid, i), user_id="u", agent_name="a")  # created on first write

    await asyncio.gather(*(write(sid) for sid in sessions))
    again = await asyncio.gather(
        *(store.add_messages(sid, batch(sid, 2), user_id="u", agent_name="a") for sid in sessions)
    )
    assert all([m.seq for m in stored] == [5, 6] for stored in again)
    with pytest.raises(DuplicateMessageId):
        await store.add_messages(sessions[0], [NewMessage(role="user", content="other", id="m2-0")])
    for sid in sessions:
        assert [m.content for m in await store.get_messages(sid)] == [
            f"{sid}:{i}:{k}" for i in range(4) for k in range(2)
        ]


def test_routed_pools_close_with_their_event_loops(database_url: str, schema_name: str) -> None:
    """The pools to the nodes belong to an event loop as the main pool does: when that loop
    ends (asyncio.run, or another thread's), they close with it, leaving no connection."""
    name = f"routing-{uuid.uuid4().hex[:8]}"
    store = PostgresSessionStore(
        database_url,
        schema=schema_name,
        route_to_nodes=True,
        connect_kwargs={"server_settings": {"application_name": name}},
    )

    async def use(text: str) -> int:
        sid = "lifecycle"
        await store.connect()
        if text == "first":
            await store.create_session("u", "a", session_id=sid)
        if store._scope.runner.routes is None:
            store._scope.runner.nodes.routes = await _the_server_as_the_only_node(store, database_url)
        await store.add_message(sid, "user", text)
        assert [m.content for m in await store.get_messages(sid)][-1] == text
        return len(store._scope.runner.node_pools())

    async def connections() -> int:
        async with PostgresSessionStore(database_url, schema=schema_name) as other:
            count = await other.pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name)
            return int(count)

    assert asyncio.run(use("first")) >= 1
    assert asyncio.run(connections()) == 0
    assert asyncio.run(use("second")) >= 1
    assert asyncio.run(connections()) == 0
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(use("third"))))
    thread.start()
    thread.join()
    assert result == [result[0]]
    assert result[0] >= 1
    assert asyncio.run(connections()) == 0
    assert [m.content for m in asyncio.run(store.get_messages("lifecycle"))] == ["first", "second", "third"]
    asyncio.run(store.close())


async def _node_of(store: PostgresSessionStore, sid: str) -> tuple[int, int]:
    """The sessions shard holding *sid*, and the port of the node holding it."""
    row = await store.pool.fetchrow(
        "SELECT p.shardid, p.nodeport FROM pg_dist_shard_placement p "
        "WHERE p.shardid = get_shard_id_for_distribution_column($1::regclass, $2::text)",
        f'"{store.schema}".agent_sessions',
        sid,
    )
    assert row is not None
    return row["shardid"], row["nodeport"]


async def test_the_shard_writes_are_taken_only_where_they_are_sound(
    store: PostgresSessionStore, database_url: str
) -> None:
    """convostore_hold_shards, on the node holding the shard, answers true only under READ
    COMMITTED, on a tested Citus version and with the shard's lock granted within its
    lock_timeout; it refuses shards of other tables; every other case takes the distributed
    path, and the appends are stored all the same."""
    if not store._scope.runner.distributed:
        pytest.skip("needs distributed tables (CONVOSTORE_DISTRIBUTE=1 on a Citus coordinator)")
    sid = (await store.create_session("u", "a")).id
    shard, port = await _node_of(store, sid)
    messages = await store.pool.fetchval(
        "SELECT get_shard_id_for_distribution_column($1::regclass, $2::text)",
        f'"{store.schema}".conversation_messages',
        sid,
    )
    parts = urlsplit(database_url)
    node_url = parts._replace(netloc=f"{parts.username or 'postgres'}@{parts.hostname}:{port}").geturl()
    hold = f'SELECT "{store.schema}".convostore_hold_shards($1::bigint[])'
    node = await asyncpg.connect(node_url, server_settings={"statement_timeout": "60s"})
    holder = await asyncpg.connect(node_url)
    try:
        assert await node.fetchval(hold, [shard]) is True
        for isolation in ("repeatable read", "serializable"):
            async with node.transaction(isolation=isolation.replace(" ", "_")):  # type: ignore[arg-type]
                assert await node.fetchval(hold, [shard]) is False, isolation
        async with node.transaction():
            await node.execute("SET LOCAL convostore.citus_shard_writes = '99.0-1'")  # a version not tested
            assert await node.fetchval(hold, [shard]) is False
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only shards of"):
            await node.fetchval(hold, [messages])
        # A move holds the shard's metadata lock exclusively: the shortcut gives up after its
        # lock_timeout (not the statement's) and the append waits on the distributed path.
        async with holder.transaction():
            await holder.execute("SELECT lock_shard_metadata(7, $1::bigint[])", [shard])
            assert await node.fetchval(hold, [shard]) is False
            pending = asyncio.ensure_future(store.add_message(sid, "user", "during the move"))
            await asyncio.sleep(0)
        assert (await pending).seq == 1
    finally:
        await node.close()
        await holder.close()
    # Under a role's or database's REPEATABLE READ default, appends still store once, in order.
    async with PostgresSessionStore(
        database_url,
        schema=store.schema,
        route_to_nodes=True,
        connect_kwargs={"server_settings": {"default_transaction_isolation": "repeatable read"}},
    ) as repeatable:
        await asyncio.gather(*(repeatable.add_message(sid, "user", f"rr {i}") for i in range(20)))
        contents = [m.content for m in await repeatable.get_messages(sid)]
    assert contents[0] == "during the move"
    assert sorted(contents[1:]) == sorted(f"rr {i}" for i in range(20))
    assert [m.seq for m in await store.get_messages(sid)] == list(range(1, 22))
