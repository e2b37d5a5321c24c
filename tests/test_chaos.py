"""The history checker: what callers were told, compared with what is stored, under faults.

32 writers append for ``CONVOSTORE_CHAOS_SECONDS`` (default 20) to 16 shared sessions of a
throwaway PostgreSQL, through a TCP proxy that drops connections at random, while

* callers are cancelled at random points of their calls,
* statements have a short ``command_timeout`` and another connection keeps locking random
  session rows for longer than that,
* the server is stopped and started three times (once by crash), each time for less than
  the calls' deadline.

Every call's outcome is recorded (acknowledged with its seq, cancelled, or failed with its
error) with its duration. Afterwards, Jepsen-style: every acknowledged append is stored
exactly once with the seq it was given, batches are whole or absent, each writer's appends
are stored in the order it made them (cancelled or failed ones included, when stored), no
call outlived its deadline by more than a second, no call was left pending, and no call
failed for want of the server (the restarts are shorter than the deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import pytest

from convostore import ConvostoreError, PostgresSessionStore, RetryPolicy, StoreTimeout

from ._chaos import TcpProxy, ThrowawayServer

SECONDS = float(os.environ.get("CONVOSTORE_CHAOS_SECONDS", "20"))
DEADLINE = 10.0
COMMAND_TIMEOUT = 0.5


@pytest.fixture
def chaos() -> Iterator[tuple[ThrowawayServer, TcpProxy]]:
    server = ThrowawayServer()
    proxy = TcpProxy(server.socket)
    try:
        yield server, proxy
    finally:
        proxy.close()
        server.close()


@dataclass
class Call:
    """One append as its caller saw it."""

    writer: int
    index: int
    texts: list[str]
    outcome: str = "pending"  # acked, cancelled, timeout, failed
    seqs: list[int] = field(default_factory=list)
    error: str = ""
    took: float = 0.0


@pytest.mark.slow
async def test_history_under_cancellations_timeouts_locks_drops_and_restarts(
    chaos: tuple[ThrowawayServer, TcpProxy],
) -> None:
    server, proxy = chaos
    policy = RetryPolicy(initial_backoff=0.02, max_backoff=0.5, deadline=DEADLINE)
    store = PostgresSessionStore(
        proxy.url, schema="public", max_size=20, retry=policy, command_timeout=COMMAND_TIMEOUT, acquire_timeout=5.0
    )
    # Setting up and reading back go through a store of their own with the default timeouts:
    # the verdict is about the faulty period, not about how fast a busy machine answers then.
    checker = PostgresSessionStore(proxy.url, schema="public")
    sessions = [(await checker.create_session(f"user-{s}", "chaos")).id for s in range(16)]
    calls: list[Call] = []
    stop = asyncio.Event()
    restarts: list[float] = []
    lag = [0.0]  # the longest the event loop was late waking up: a busy machine's delay, not ours

    async def watch_loop() -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.05)
            lag[0] = max(lag[0], time.monotonic() - before - 0.05)

    async def write(w: int) -> None:
        sid = sessions[w % 16]
        i = 0
        while not stop.is_set():
            call = Call(w, i, [f"{w}:{i}:{j}" for j in range(random.choice((1, 1, 1, 2, 3)))])
            calls.append(call)
            task = asyncio.create_task(store.add_messages(sid, [{"role": "user", "content": t} for t in call.texts]))
            start = time.monotonic()
            if random.random() < 0.05:
                await asyncio.sleep(random.choice((0, 0.001, 0.005, 0.02)))
                task.cancel()
            try:
                stored = await task
            except asyncio.CancelledError:
                call.outcome = "cancelled"
            except StoreTimeout as exc:
                call.outcome, call.error = "timeout", str(exc)
            except ConvostoreError as exc:
                call.outcome, call.error = "failed", f"{type(exc).__name__}: {exc}"
            else:
                call.outcome, call.seqs = "acked", [m.seq for m in stored]
            call.took = time.monotonic() - start
            i += 1

    async def restart_server() -> None:
        start = time.monotonic()
        for n, at in enumerate((0.2, 0.45, 0.7)):
            await asyncio.sleep(max(0.0, start + at * SECONDS - time.monotonic()))
            await asyncio.to_thread(server.stop, "immediate" if n == 1 else "fast")
            await asyncio.sleep(1.5)
            await asyncio.to_thread(server.start)
            restarts.append(time.monotonic())

    async def drop_connections() -> None:
        while not stop.is_set():
            await asyncio.sleep(random.uniform(0.2, 1.0))
            proxy.drop_random()

    async def lock_sessions() -> None:
        while not stop.is_set():
            await asyncio.sleep(random.uniform(0.3, 1.0))
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn = await asyncpg.connect(proxy.url, timeout=2)
                try:
                    async with conn.transaction():
                        await conn.execute(
                            "SELECT 1 FROM agent_sessions WHERE id = $1 FOR UPDATE", random.choice(sessions)
                        )
                        await asyncio.sleep(COMMAND_TIMEOUT * 2)
                finally:
                    await conn.close(timeout=2)

    writers = [asyncio.create_task(write(w)) for w in range(32)]
    faults = [asyncio.create_task(f()) for f in (drop_connections, lock_sessions, watch_loop)]
    restarting = asyncio.create_task(restart_server())
    await asyncio.sleep(SECONDS)
    await restarting
    stop.set()
    _, pending = await asyncio.wait(writers, timeout=DEADLINE + 5)
    await asyncio.gather(*faults, return_exceptions=True)
    assert not pending, f"{len(pending)} writers never returned"
    assert all(c.outcome != "pending" for c in calls)

    # What is stored, by content ("writer:index:part").
    stored: dict[str, tuple[str, int]] = {}
    duplicated = 0
    await store.close()
    for sid in sessions:
        for m in await checker.get_messages(sid):
            duplicated += m.content in stored
            stored[m.content] = (sid, m.seq)
    await checker.close()

    outcomes = Counter(c.outcome for c in calls)
    lost = sum(1 for c in calls if c.outcome == "acked" for t in c.texts if t not in stored)
    wrong_seq = sum(
        1
        for c in calls
        if c.outcome == "acked"
        for t, s in zip(c.texts, c.seqs, strict=True)
        if t in stored and stored[t][1] != s
    )
    partial = sum(1 for c in calls if 0 < sum(t in stored for t in c.texts) < len(c.texts))
    unacked_stored = sum(1 for c in calls if c.outcome != "acked" and c.texts[0] in stored)
    reordered = 0
    for w in range(32):
        seqs = [stored[c.texts[0]][1] for c in calls if c.writer == w and c.texts[0] in stored]
        reordered += sum(1 for a, b in itertools.pairwise(seqs) if a >= b)
    slowest = max(c.took for c in calls)
    failed = Counter(c.error.split(":")[0] for c in calls if c.outcome == "failed")
    print(
        f"\nhistory {SECONDS:.0f}s, 32 writers on 16 sessions, 3 restarts, {proxy.dropped} dropped connections: "
        f"{len(calls)} calls: {outcomes['acked']} acknowledged, {outcomes['cancelled']} cancelled, "
        f"{outcomes['timeout']} timed out (row locks), {outcomes['failed']} failed {dict(failed)}; "
        f"lost {lost}, duplicated {duplicated}, wrong seq {wrong_seq}, partial batches {partial}, "
        f"reordered {reordered}; unacknowledged but stored {unacked_stored}; "
        f"slowest call {slowest:.2f}s (deadline {DEADLINE:.0f}s, event loop late by up to {lag[0]:.2f}s)"
    )
    assert len(restarts) == 3
    assert outcomes["acked"] > 100
    assert (lost, duplicated, wrong_seq, partial, reordered) == (0, 0, 0, 0, 0)
    assert outcomes["failed"] == 0, f"calls failed although every restart was shorter than the deadline: {failed}"
    # A deadline is kept on the loop's clock: a loop the machine starves wakes late for it.
    assert slowest <= DEADLINE + 1 + 2 * lag[0]
