"""The two modes that run instead of the suite.

* :func:`citus_mode`: on one Citus cluster, convostore's appends at 32 concurrent tasks (W2's
  shape) on undistributed tables (a schema migrated without distributing) and on distributed
  ones (calls through the coordinator, and routed straight to the node holding each
  session), their ratios within each run, and the number of tasks EXPLAIN on the coordinator
  shows for the hot statements (the last-20 read, the append, the SDK's read and append).
* :func:`growth_10m`: the last-20 read (W4) on one node as the messages table grows from
  10k to 10M rows (1M sessions of 10 messages, filled with ``INSERT ... SELECT
  generate_series`` in chunks, then ``ANALYZE``), compared with a 10k-row reference schema
  measured in turns with it; both schemas are dropped afterwards.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any

import asyncpg
from rich.markup import escape
from rich.table import Table

from convostore import PostgresSessionStore
from convostore.citus._shards import ShardMap, hashtext
from convostore.openai_agents import PostgresSession

from . import workloads as w
from ._common import cell, console, ratio_cell, spread, verdict
from .systems import Convostore

CITUS_TASKS = 32
CITUS_TARGET = 0.4  # distributed / undistributed appends/s
WARM_SESSIONS = 16  # each pooled connection appends once to each (on distributed tables, one per shard)


class CitusConvostore(Convostore):
    """convostore on a Citus coordinator, its tables distributed or left on the coordinator;
    distributed, its calls go through the coordinator or, *routed*, straight to the nodes."""

    def __init__(self, url: str, schema: str, pool_size: int, *, distributed: bool, routed: bool = False) -> None:
        super().__init__(url, schema, pool_size)
        self.distributed = distributed
        self.routed = routed
        self.name = ("routed" if routed else "distributed") if distributed else "undistributed"

    def _options(self) -> dict[str, Any]:
        return {"distribute": self.distributed, "route_to_nodes": self.routed}

    async def open(self) -> None:
        await super().open()
        if self.store._scope.runner.distributed != self.distributed:
            raise AssertionError(f"{self.schema}: expected distributed={self.distributed}")
        routes = self.store._scope.runner.routes
        if routes is None:
            sessions = [await self.new_session("warm") for _ in range(WARM_SESSIONS)]
        else:  # a session on every shard: a connection prepares its statements per shard
            sessions = [
                (await self.store.create_session("warm", "bench", session_id=sid)).id for sid in on_every_shard(routes)
            ]
        await warm_connections(self.store, sessions)
        if self.routed:  # the pools to the nodes open their connections on first use
            for _ in range(4):
                await asyncio.gather(*(self.store.add_message(sid, "user", "warm-up") for sid in sessions * 2))


def on_every_shard(routes: ShardMap) -> list[str]:
    """Session ids, one in each shard's hash range of *routes*."""
    found: dict[int, str] = {}
    while len(found) < len(routes.lows):
        sid = str(uuid.uuid4())
        found.setdefault(bisect.bisect_right(routes.lows, hashtext(sid)) - 1, sid)
    return list(found.values())


async def warm_connections(store: PostgresSessionStore, sessions: list[str]) -> None:
    """Hold every pooled connection at once and append (and read) on each, so that no timed
    call pays a connection's first use (Citus's type introspection, worker connections). The
    statements are the ones the store sends, captured (see :func:`capture`)."""
    capturer = PostgresSessionStore(store.database_url, schema=store.schema, coalesce_appends=False)
    pool = store.pool
    size = pool.get_max_size()
    # Captured one at a time (fresh message ids for every append), then sent on every connection.
    work: list[list[tuple[str, tuple[Any, ...]]]] = [[] for _ in range(size)]
    for statements in work:
        for sid in sessions:
            statements.append(await capture(capturer, partial(capturer.add_message, sid, "user", "warm-up")))
            statements.append(await capture(capturer, partial(capturer.get_messages, sid, limit=20)))
    await capturer.close()

    async def use(conn: Any, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        for sql, args in statements:
            await conn.fetch(sql, *args)

    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(pool.acquire()) for _ in range(size)]
        await asyncio.gather(*(use(c, statements) for c, statements in zip(conns, work, strict=True)))


class _Captured(Exception):
    def __init__(self, sql: str, args: tuple[Any, ...]) -> None:
        super().__init__(sql)
        self.sql, self.args = sql, args


class _Recorder:
    """A stand-in connection: the first statement sent to it is captured, not run."""

    async def fetch(self, sql: str, *args: Any) -> Any:
        raise _Captured(sql, args)

    fetchrow = fetchval = execute = fetch


async def capture(store: PostgresSessionStore, call: Callable[[], Awaitable[Any]]) -> tuple[str, tuple[Any, ...]]:
    """The statement and arguments *call* sends through *store* (its first one), which is not
    run: every statement of a store goes through its runner, replaced meanwhile."""

    async def run(what: str, fn: Callable[[Any], Awaitable[Any]], **_: Any) -> Any:
        return await fn(_Recorder())

    setattr(store._scope.runner, "run", run)  # noqa: B010 (shadows the method on this instance only)
    try:
        await call()
    except _Captured as captured:
        return captured.sql, captured.args
    finally:
        delattr(store._scope.runner, "run")
    raise AssertionError("the call sent no statement")


async def explain_tasks(url: str, schema: str, sid: str) -> dict[str, Any]:
    """EXPLAIN on the coordinator of the statements convostore and its SDK session send."""
    # Appends one at a time (no coalescing), so that the append captured is a lone one.
    store = PostgresSessionStore(url, schema=schema, min_size=1, max_size=1, coalesce_appends=False)
    await store.connect()
    sdk = PostgresSession(sid, store=store, user_id="bench-user", agent_name="bench")
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "(a) last-20 read: store.get_messages(sid, limit=20)": lambda: store.get_messages(sid, limit=20),
        "(b) append: store.add_message(sid, ...)": lambda: store.add_message(sid, "user", "hi"),
        "(c) SDK read: PostgresSession.get_items(limit=20)": lambda: sdk.get_items(limit=20),
        "(d) SDK append: PostgresSession.add_items([item])": lambda: sdk.add_items([{"role": "user", "content": "hi"}]),
    }
    out: dict[str, Any] = {}
    try:
        for label, call in calls.items():
            sql, args = await capture(store, call)
            rows = await store.pool.fetch("EXPLAIN " + sql, *args)
            plan = "\n".join(r[0] for r in rows)
            counts = [int(n) for n in re.findall(r"Task Count: (\d+)", plan)]
            out[label] = {"sql": sql, "args": [repr(a) for a in args], "task_counts": counts, "plan": plan}
    finally:
        await store.close()
    return out


async def citus_mode(url: str, sizes: w.Sizes, runs: int, pool: int) -> dict[str, Any]:
    """Appends/s at 32 tasks on undistributed vs distributed tables, and EXPLAIN task counts."""
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
        workers = await conn.fetchval("SELECT count(*) FROM citus_get_active_worker_nodes()")
        server = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    if version is None:
        raise SystemExit("--citus: the database at that URL has no citus extension")
    # Twice W2's appends: a distributed append is slower, and a short timing is noisy.
    sized = replace(sizes, w2_appends=2 * sizes.w2_appends)
    console.print(
        f"Citus {version} (PostgreSQL {server}, {workers} workers); W2 at {CITUS_TASKS} tasks, "
        f"{sized.w2_appends} appends; pool {pool}; runs {runs}"
    )
    results: dict[str, list[float]] = {"undistributed": [], "distributed": [], "routed": []}
    explain: dict[str, Any] = {}
    shapes = [(False, False), (True, False), (True, True)]  # (distributed, routed)
    for run in range(runs):
        order = shapes if run % 2 == 0 else shapes[::-1]  # alternate who goes first
        for distributed, routed in order:
            system = CitusConvostore(url, f"bench_citus_{'dist' if distributed else 'local'}", pool,
                                     distributed=distributed, routed=routed)  # fmt: skip
            started = time.perf_counter()
            await system.start()
            try:
                rate = await w.w2_concurrent(system, sized, CITUS_TASKS)
                results[system.name].append(rate)
                if distributed and not routed and not explain:
                    sid = await system.new_session("bench-user")
                    for i in range(3):
                        await system.append(sid, f"explained {i}")
                    explain = await explain_tasks(url, system.schema, sid)
            finally:
                await system.stop()
            console.print(
                f"  run {run + 1} {system.name}: {rate:,.0f} appends/s ({time.perf_counter() - started:.1f}s)",
                style="dim",
            )
    ratios = [d / u for u, d in zip(results["undistributed"], results["distributed"], strict=True)]
    routed_ratios = [d / u for u, d in zip(results["undistributed"], results["routed"], strict=True)]
    several = runs > 1
    table = Table(
        title=f"Citus: convostore appends at {CITUS_TASKS} concurrent tasks ({runs} run(s), medians)",
        caption="(n%): spread over the runs, (max - min) / median; (a-b): lowest and highest run" if several else None,
    )
    for column in ("workload", "unit", "undistributed", "distributed", "distributed / undistributed", "target"):
        table.add_column(column, justify="left" if column in ("workload", "unit") else "right")
    met, shown = verdict(statistics.median(ratios), CITUS_TARGET, True)
    routed_met, routed_shown = verdict(statistics.median(routed_ratios), CITUS_TARGET, True)
    table.add_row(
        f"W2 {CITUS_TASKS} tasks", "/s", cell(results["undistributed"], "/s"), cell(results["distributed"], "/s"),
        ratio_cell(ratios), shown,
    )  # fmt: skip
    table.add_row(
        f"W2 {CITUS_TASKS} tasks, routed to the nodes", "/s", "", cell(results["routed"], "/s"),
        ratio_cell(routed_ratios), routed_shown,
    )  # fmt: skip
    console.print(table)

    tasks = Table(title="EXPLAIN on the coordinator (distributed tables): tasks per statement")
    tasks.add_column("statement")
    tasks.add_column("arguments", justify="right")
    tasks.add_column("Task Count", justify="right")
    tasks.add_column("target", justify="right")
    for label, entry in explain.items():
        counts = entry["task_counts"]
        ok = counts == [1]
        entry["met"] = ok
        tasks.add_row(
            escape(label),
            str(len(entry["args"])),
            ", ".join(map(str, counts)) or "none (not a distributed plan)",
            f"1 {'[green]met[/]' if ok else '[red]missed[/]'}",
        )
    console.print(tasks)
    for label, entry in explain.items():
        console.print(escape(f"{label}:\n{entry['plan']}"), style="dim")
    return {
        "meta": {
            "mode": "citus",
            "citus_version": version,
            "server_version": server,
            "workers": workers,
            "runs": runs,
            "pool_size": pool,
            "tasks": CITUS_TASKS,
            "appends": sized.w2_appends,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "appends_per_s": {name: spread(values) for name, values in results.items()},
        "distributed_over_undistributed": spread(ratios) | {"target": CITUS_TARGET, "met": met},
        "routed_over_undistributed": spread(routed_ratios) | {"target": CITUS_TARGET, "met": routed_met},
        "explain": explain,
    }


# -- growth to 10M rows ---------------------------------------------------------------------------

GROWTH_SESSIONS = 1_000_000
GROWTH_PER_SESSION = 10
GROWTH_CHUNK = 50_000  # sessions per statement (500k messages)
GROWTH_LONG = 10_000  # the messages of the session that is read
GROWTH_READS = 500
GROWTH_TARGET = 1.25
GROWTH_ROUNDS = 5  # reference and grown schema measured in turns


async def _fill_many(system: Convostore, first: int, last: int) -> None:
    """Sessions g-<first>..g-<last> (zero-padded, so that keys arrive in index order), with
    GROWTH_PER_SESSION messages each, in two ``INSERT ... SELECT generate_series``."""
    s, tenant = system.schema, system.store.tenant
    sid = "'g-' || lpad(g::text, 7, '0')"
    await system.admin.execute(
        f'INSERT INTO "{s}".agent_sessions (tenant_id, id, user_id, agent_name, updated_at, last_seq) '
        f"SELECT $1, {sid}, 'user-' || (g % 10000), 'bench', now() - (g || ' seconds')::interval, $4 "
        "FROM generate_series($2::int, $3::int) g",
        tenant, first, last, GROWTH_PER_SESSION,
    )  # fmt: skip
    # Statistics for the sessions just added: the foreign key check of every message row
    # runs a cached plan, which would otherwise stay the sequential scan it was when the
    # table was nearly empty (and take minutes per chunk). ANALYZE invalidates it.
    await system.admin.execute(f'ANALYZE "{s}".agent_sessions')
    await system.admin.execute(
        f'INSERT INTO "{s}".conversation_messages (tenant_id, session_id, seq, id, user_id, role, content) '
        f"SELECT $1, {sid}, k, 'm' || k, 'user-' || (g % 10000), CASE k % 2 WHEN 1 THEN 'user' ELSE 'assistant' END, "
        "'message ' || k || ' of session ' || g FROM generate_series($2::int, $3::int) g, generate_series(1, $4) k",
        tenant, first, last, GROWTH_PER_SESSION,
    )  # fmt: skip


async def _sizes(system: Convostore) -> dict[str, int]:
    rows = await system.admin.fetch(
        "SELECT c.relname, pg_total_relation_size(c.oid) AS bytes FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
        system.schema,
    )
    return {r["relname"]: int(r["bytes"]) for r in rows}


async def growth_10m(url: str) -> dict[str, Any]:
    """W4's last-20 read on one node at 10k, 1M and 10M messages (convostore only)."""
    big = Convostore(url, "bench_growth_10m", 4)
    ref = Convostore(url, "bench_growth_ref", 4)
    out: dict[str, Any] = {"p50_ms": {}}
    fill_s = 0.0
    await big.start()
    await ref.start()
    try:
        server = await big.admin.fetchval("SHOW server_version")
        db_before = int(await big.admin.fetchval("SELECT pg_database_size(current_database())"))
        console.print(
            f"growth to 10M (PostgreSQL {server}): {GROWTH_SESSIONS:,} sessions x {GROWTH_PER_SESSION} messages, "
            f"one session of {GROWTH_LONG:,} read {GROWTH_READS} times per point"
        )
        sids: dict[str, str] = {}
        for system in (big, ref):
            sids[system.schema] = await system.new_session("growth")
            await system.fill(sids[system.schema], GROWTH_LONG)
            await w._analyze(system)

        async def p50(system: Convostore) -> float:
            return await w._p50_ms(lambda: system.last_n(sids[system.schema], 20), GROWTH_READS)

        ref_p50s: list[float] = []
        big_p50s: list[float] = []
        out["p50_ms"][GROWTH_LONG] = await p50(big)
        ref_p50s.append(await p50(ref))
        console.print(f"  {GROWTH_LONG:,} messages: p50 {out['p50_ms'][GROWTH_LONG]:.3f} ms", style="dim")
        done = 0
        for first in range(1, GROWTH_SESSIONS + 1, GROWTH_CHUNK):
            last = min(first + GROWTH_CHUNK - 1, GROWTH_SESSIONS)
            chunk_started = time.perf_counter()
            await _fill_many(big, first, last)
            fill_s += time.perf_counter() - chunk_started
            done = last
            rows = GROWTH_LONG + done * GROWTH_PER_SESSION
            console.print(f"  filled {rows:,} messages ({fill_s:.0f}s so far)", style="dim")
            if done * GROWTH_PER_SESSION == 1_000_000:
                await w._analyze(big)
                out["p50_ms"][rows] = await p50(big)
                console.print(f"  {rows:,} messages: p50 {out['p50_ms'][rows]:.3f} ms", style="dim")
        analyze_started = time.perf_counter()
        await w._analyze(big)
        out["analyze_seconds"] = time.perf_counter() - analyze_started
        total = int(await big.admin.fetchval(f'SELECT count(*) FROM "{big.schema}".conversation_messages'))
        out["p50_ms"][total] = await p50(big)
        console.print(f"  {total:,} messages: p50 {out['p50_ms'][total]:.3f} ms", style="dim")
        # In turns with the 10k-row reference, so that drift of the machine hits both alike.
        for _ in range(GROWTH_ROUNDS):
            ref_p50s.append(await p50(ref))
            big_p50s.append(await p50(big))
        sizes = await _sizes(big)
        db_after = int(await big.admin.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await big.stop()
        await ref.stop()
    db_dropped = await _database_size(url)
    before_after = out["p50_ms"][total] / out["p50_ms"][GROWTH_LONG]
    in_turns = [b / r for b, r in zip(big_p50s, ref_p50s[1:], strict=True)]
    met_turns, shown_turns = verdict(statistics.median(in_turns), GROWTH_TARGET, False)
    met_before, shown_before = verdict(before_after, GROWTH_TARGET, False)

    table = Table(title="W4 p50 by table size")
    table.add_column("messages in the table", justify="right")
    table.add_column("p50 ms", justify="right")
    for rows, value in out["p50_ms"].items():
        table.add_row(f"{rows:,}", f"{value:.3f}")
    console.print(table)
    ratios = Table(title="growth ratio (target <= 1.25x)")
    ratios.add_column("comparison")
    ratios.add_column("ratio", justify="right")
    ratios.add_column("target", justify="right")
    ratios.add_row(f"{total:,} rows / {GROWTH_LONG:,} rows (same table, before and after the fill)",
                   f"{before_after:.2f}x", shown_before)  # fmt: skip
    ratios.add_row(
        f"{total:,} rows / {GROWTH_LONG:,}-row reference schema, {GROWTH_ROUNDS} rounds in turns "
        f"(p50s {', '.join(f'{b:.3f}' for b in big_p50s)} vs {', '.join(f'{r:.3f}' for r in ref_p50s[1:])})",
        ratio_cell(in_turns), shown_turns,
    )  # fmt: skip
    console.print(ratios)
    gb = 1024**3
    console.print(
        f"fill: {fill_s:.0f}s (ANALYZE {out['analyze_seconds']:.1f}s); tables "
        + ", ".join(f"{k} {v / gb:.2f} GB" for k, v in sizes.items())
        + f"; database {db_before / gb:.2f} GB -> {db_after / gb:.2f} GB, {db_dropped / gb:.2f} GB after dropping"
    )
    out |= {
        "meta": {
            "mode": "growth-10m",
            "server_version": server,
            "sessions": GROWTH_SESSIONS,
            "per_session": GROWTH_PER_SESSION,
            "long_session": GROWTH_LONG,
            "reads": GROWTH_READS,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "fill_seconds": fill_s,
        "ratio_same_table": {"ratio": before_after, "target": GROWTH_TARGET, "met": met_before},
        "ratio_vs_reference_in_turns": spread(in_turns) | {"target": GROWTH_TARGET, "met": met_turns},
        "reference_p50_ms": ref_p50s,
        "grown_p50_ms": big_p50s,
        "table_bytes": sizes,
        "database_bytes": {"before": db_before, "filled": db_after, "after_drop": db_dropped},
    }
    return out


async def _database_size(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()
