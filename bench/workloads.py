"""Workloads W1-W7 and the extra measurements; each returns one number for one system."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .systems import System


@dataclass(frozen=True)
class Sizes:
    """Workload parameters (printed with every report)."""

    w1_appends: int
    w2_appends: int
    w2_tasks: tuple[int, ...]
    w2b_tasks: int
    w3_batches: int
    w3_batch: int
    w4_session: int
    w4_reads: int
    w4_last: int
    w5_session: int
    w5_reads: int
    w6_sessions: int
    w6_messages: int
    w6_reads: int
    w6_listed: int
    w7_sessions: int
    growth: tuple[int, ...]
    memory_session: int


FULL = Sizes(
    w1_appends=2000, w2_appends=4000, w2_tasks=(1, 8, 32, 128), w2b_tasks=32, w3_batches=50, w3_batch=100,
    w4_session=10_000, w4_reads=300, w4_last=20, w5_session=1000, w5_reads=200,
    w6_sessions=50, w6_messages=20, w6_reads=200, w6_listed=10, w7_sessions=10_000,
    growth=(10_000, 100_000, 1_000_000), memory_session=100_000,
)  # fmt: skip
QUICK = Sizes(
    w1_appends=500, w2_appends=1500, w2_tasks=(1, 8, 32, 128), w2b_tasks=32, w3_batches=20, w3_batch=100,
    w4_session=10_000, w4_reads=100, w4_last=20, w5_session=1000, w5_reads=50,
    w6_sessions=50, w6_messages=20, w6_reads=50, w6_listed=10, w7_sessions=2000,
    growth=(10_000, 100_000), memory_session=20_000,
)  # fmt: skip
TINY = Sizes(
    w1_appends=20, w2_appends=64, w2_tasks=(1, 8), w2b_tasks=32, w3_batches=2, w3_batch=10,
    w4_session=200, w4_reads=5, w4_last=20, w5_session=50, w5_reads=5,
    w6_sessions=5, w6_messages=3, w6_reads=5, w6_listed=3, w7_sessions=20,
    growth=(300, 600), memory_session=200,
)  # fmt: skip
SIZES = {"full": FULL, "quick": QUICK, "tiny": TINY}


async def _analyze(system: System) -> None:
    """Bulk fills leave fresh tables without statistics; production tables have them."""
    tables = ", ".join(f'"{system.schema}"."{t}"' for t in await _tables(system))
    await system.admin.execute(f"ANALYZE {tables}")


async def _tables(system: System) -> list[str]:
    rows = await system.admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", system.schema)
    return [r["tablename"] for r in rows]


async def _p50_ms(fn: Callable[[], Awaitable[Any]], reads: int) -> float:
    await fn()  # warm the statement cache
    times = []
    for _ in range(reads):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def w1_sequential(system: System, sizes: Sizes) -> float:
    """W1: appends/s, one task, one message per call."""
    sid = await system.new_session("w1")
    await system.append(sid, "warm-up")
    start = time.perf_counter()
    for i in range(sizes.w1_appends):
        await system.append(sid, f"sequential message {i}")
    return sizes.w1_appends / (time.perf_counter() - start)


async def w1_client_cpu(system: System, sizes: Sizes) -> float:
    """W1's client side: microseconds of this process's CPU per sequential append (the
    server's time not included; the client and the server share the machine)."""
    sid = await system.new_session("w1-cpu")
    await system.append(sid, "warm-up")
    start = time.process_time()
    for i in range(sizes.w1_appends):
        await system.append(sid, f"sequential message {i}")
    return (time.process_time() - start) / sizes.w1_appends * 1e6


async def w2_concurrent(system: System, sizes: Sizes, tasks: int) -> float:
    """W2: appends/s with *tasks* concurrent writers, each on its own session."""
    sessions = [await system.new_session("w2") for _ in range(tasks)]
    per_task = max(1, sizes.w2_appends // tasks)
    await asyncio.gather(*(system.append(sid, "warm-up") for sid in sessions))

    async def writer(sid: str) -> None:
        for i in range(per_task):
            await system.append(sid, f"concurrent message {i}")

    start = time.perf_counter()
    await asyncio.gather(*(writer(sid) for sid in sessions))
    return per_task * tasks / (time.perf_counter() - start)


async def w2b_one_session(system: System, sizes: Sizes) -> float:
    """W2b: appends/s with ``w2b_tasks`` concurrent writers, all on one session."""
    sid = await system.new_session("w2b")
    tasks = sizes.w2b_tasks
    per_task = max(1, sizes.w2_appends // tasks)
    await asyncio.gather(*(system.append(sid, "warm-up") for _ in range(tasks)))

    async def writer(task: int) -> None:
        for i in range(per_task):
            await system.append(sid, f"task {task} message {i}")

    start = time.perf_counter()
    await asyncio.gather(*(writer(t) for t in range(tasks)))
    return per_task * tasks / (time.perf_counter() - start)


async def w3_batch(system: System, sizes: Sizes) -> float:
    """W3: messages/s appended in batches."""
    sid = await system.new_session("w3")
    texts = [f"batched message {i}" for i in range(sizes.w3_batch)]
    await system.append_batch(sid, texts)
    start = time.perf_counter()
    for _ in range(sizes.w3_batches):
        await system.append_batch(sid, texts)
    return sizes.w3_batches * sizes.w3_batch / (time.perf_counter() - start)


async def w4_last_n(system: System, sizes: Sizes, sid: str | None = None) -> float:
    """W4: p50 ms to read the last 20 messages of a long session."""
    if sid is None:
        sid = await system.new_session("w4")
        await system.fill(sid, sizes.w4_session)
        await _analyze(system)
    return await _p50_ms(lambda: system.last_n(sid, sizes.w4_last), sizes.w4_reads)


async def w4_windows(system: System, sizes: Sizes) -> dict[str, float] | None:
    """W4 as windows: p50 ms of the last-20 read, of a 20-turn window and of a token window
    holding 20 messages, on the same long session (each message its own turn here)."""
    sid = await system.new_session("w4w")
    await system.fill(sid, sizes.w4_session)
    await _analyze(system)
    n = sizes.w4_last
    if await system.window(sid, n, None) is None:
        return None
    budget = await system.tokens_of_last(sid, n)
    turns = await system.window(sid, n, None)
    tokens = await system.window(sid, None, budget)
    if turns is None or tokens is None or len(turns) != n or len(tokens) != n:
        raise AssertionError(f"{system.name}: windows of {n} messages read {len(turns or [])} and {len(tokens or [])}")
    reads: dict[str, Callable[[], Awaitable[Any]]] = {
        "last": lambda: system.last_n(sid, n),
        "turns": lambda: system.window(sid, n, None),
        "tokens": lambda: system.window(sid, None, budget),
    }
    # The three reads take turns, one read at a time, so that what the machine does
    # meanwhile weighs on each alike; the ratios of their p50s are what is judged, from three
    # times W4's reads each (a ratio near its target needs them to be told apart from noise).
    times: dict[str, list[float]] = {kind: [] for kind in reads}
    for read in reads.values():
        await read()  # warm the statement cache
    for _ in range(3 * sizes.w4_reads):
        for kind, read in reads.items():
            start = time.perf_counter()
            await read()
            times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) * 1000 for kind, t in times.items()}


async def w5_whole(system: System, sizes: Sizes) -> float:
    """W5: p50 ms to read a whole session."""
    sid = await system.new_session("w5")
    await system.fill(sid, sizes.w5_session)
    await _analyze(system)
    return await _p50_ms(lambda: system.whole(sid), sizes.w5_reads)


async def w6_recent(system: System, sizes: Sizes) -> float | None:
    """W6: p50 ms to list a user's 10 most recent sessions with their messages."""
    if not system.supports_recent:
        return None
    user = "w6-user"
    for _ in range(sizes.w6_sessions):
        sid = await system.new_session(user)
        await system.fill(sid, sizes.w6_messages)
        await system.append(sid, "touch")  # bumps updated_at where the system keeps one
    await _analyze(system)
    return await _p50_ms(lambda: system.recent_with_messages(user, sizes.w6_listed), sizes.w6_reads)


async def w7_delete(system: System, sizes: Sizes) -> float:
    """W7: seconds to delete the sessions idle for more than 30 days."""
    await system.fill_old_sessions(sizes.w7_sessions, "w7")
    await _analyze(system)
    start = time.perf_counter()
    deleted = await system.delete_idle(sizes.w7_sessions)
    elapsed = time.perf_counter() - start
    if deleted != sizes.w7_sessions:
        raise AssertionError(f"{system.name} deleted {deleted} of {sizes.w7_sessions} sessions")
    return elapsed


async def growth(system: System, sizes: Sizes) -> dict[int, float]:
    """W4 p50 ms as the messages table grows (other sessions fill it); must stay flat."""
    sid = await system.new_session("growth")
    await system.fill(sid, min(sizes.w4_session, sizes.growth[0]))
    out = {}
    for target in sizes.growth:
        rows = await system.table_rows()
        while rows < target:
            filler = await system.new_session("filler")
            chunk = min(100_000, target - rows)
            await system.fill(filler, chunk)
            rows += chunk
        await _analyze(system)
        out[target] = await w4_last_n(system, sizes, sid)
    return out


async def memory_mb(system: System, sizes: Sizes) -> float:
    """Peak Python memory (MB, tracemalloc) while reading a whole long session."""
    sid = await system.new_session("memory")
    await system.fill(sid, sizes.memory_session)
    gc.collect()
    tracemalloc.start()
    try:
        result = await system.whole(sid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if len(result) != sizes.memory_session:
        raise AssertionError(f"{system.name} read {len(result)} of {sizes.memory_session} messages")
    return peak / 1e6


async def paired_costs(systems: dict[str, System], sizes: Sizes, rounds: int = 10) -> dict[str, dict[str, float]]:
    """W1, W3 and W4 of several systems measured in turns (each round, every system does a
    tenth of the work, in a rotating order), so that what the machine does meanwhile weighs
    on each alike: the cost of a variant is the ratio of these, not of figures taken a
    minute apart. Returns {system: {workload: value}} in W1's, W3's and W4's units."""
    names = list(systems)
    w1_sessions = {n: await s.new_session("cost-w1") for n, s in systems.items()}
    w3_sessions = {n: await s.new_session("cost-w3") for n, s in systems.items()}
    w4_sessions = {}
    for n, s in systems.items():
        w4_sessions[n] = await s.new_session("cost-w4")
        await s.fill(w4_sessions[n], sizes.w4_session)
        await _analyze(s)
    texts = [f"batched message {i}" for i in range(sizes.w3_batch)]
    for n, s in systems.items():  # warm every statement
        await s.append(w1_sessions[n], "warm-up")
        await s.append_batch(w3_sessions[n], texts)
        await s.last_n(w4_sessions[n], sizes.w4_last)
    spent = {n: {"W1": 0.0, "W3": 0.0} for n in names}
    counts = {n: {"W1": 0, "W3": 0} for n in names}
    reads: dict[str, list[float]] = {n: [] for n in names}
    appends = max(sizes.w1_appends // rounds, 1)
    batches = max(sizes.w3_batches // rounds, 1)
    per_round_reads = max(sizes.w4_reads // rounds, 1)
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            s = systems[n]
            start = time.perf_counter()
            for i in range(appends):
                await s.append(w1_sessions[n], f"message {i}")
            spent[n]["W1"] += time.perf_counter() - start
            counts[n]["W1"] += appends
            start = time.perf_counter()
            for _ in range(batches):
                await s.append_batch(w3_sessions[n], texts)
            spent[n]["W3"] += time.perf_counter() - start
            counts[n]["W3"] += batches * len(texts)
            for _ in range(per_round_reads):
                start = time.perf_counter()
                await s.last_n(w4_sessions[n], sizes.w4_last)
                reads[n].append(time.perf_counter() - start)
    return {
        n: {
            "W1 sequential appends": counts[n]["W1"] / spent[n]["W1"],
            "W3 batch": counts[n]["W3"] / spent[n]["W3"],
            "W4 last 20 of long session": statistics.median(reads[n]) * 1000,
        }
        for n in names
    }
