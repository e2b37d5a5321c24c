"""Chaos: appends keep their promises while the server restarts and connections drop.

32 tasks append for ``CONVOSTORE_CHAOS_SECONDS`` (default 30) through a TCP proxy that drops
connections at random, to a throwaway PostgreSQL that is stopped and started three times
(once by crash). Then every acknowledged append is accounted for, Jepsen-style.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from convostore import ConvostoreError, PostgresSessionStore, RetryPolicy

from ._chaos import TcpProxy, ThrowawayServer

SECONDS = float(os.environ.get("CONVOSTORE_CHAOS_SECONDS", "30"))


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
class Writer:
    session_id: str
    acked: list[tuple[str, int, float]] = field(default_factory=list)  # (id, seq, when)
    failed: list[str] = field(default_factory=list)


@pytest.mark.slow
async def test_no_acknowledged_append_is_lost_duplicated_or_reordered(
    chaos: tuple[ThrowawayServer, TcpProxy],
) -> None:
    server, proxy = chaos
    policy = RetryPolicy(attempts=10_000, initial_backoff=0.02, max_backoff=0.5, deadline=15.0)
    store = PostgresSessionStore(
        proxy.url, min_size=2, max_size=20, retry=policy, command_timeout=5.0, acquire_timeout=5.0
    )
    await store.connect()
    writers = [Writer((await store.create_session(f"user-{w}", "chaos")).id) for w in range(32)]
    stop = asyncio.Event()
    ups: list[float] = []

    async def write(w: int, writer: Writer) -> None:
        i = 0
        while not stop.is_set():
            message_id = f"{w}-{i}"
            try:
                stored = await store.add_message(writer.session_id, "user", f"writer {w} #{i}", message_id=message_id)
            except ConvostoreError:
                writer.failed.append(message_id)
            else:
                writer.acked.append((message_id, stored.seq, time.monotonic()))
            i += 1

    async def faults() -> None:
        start = time.monotonic()
        for n, at in enumerate((0.2, 0.45, 0.7)):
            await asyncio.sleep(max(0.0, start + at * SECONDS - time.monotonic()))
            await asyncio.to_thread(server.stop, "immediate" if n == 1 else "fast")
            await asyncio.sleep(1.5)
            await asyncio.to_thread(server.start)
            ups.append(time.monotonic())

    async def drops() -> None:
        while not stop.is_set():
            await asyncio.sleep(random.uniform(0.2, 1.0))
            proxy.drop_random()

    tasks = [asyncio.create_task(write(w, writer)) for w, writer in enumerate(writers)]
    chaos_tasks = [asyncio.create_task(faults()), asyncio.create_task(drops())]
    await asyncio.sleep(SECONDS)
    await chaos_tasks[0]
    stop.set()
    await asyncio.gather(*tasks, chaos_tasks[1])

    # Account for every acknowledged append.
    acked = lost = duplicated = reordered = unacked_present = unacked_absent = 0
    for writer in writers:
        stored = await store.get_messages(writer.session_id)
        ids = [m.id for m in stored]
        duplicated += len(ids) - len(set(ids))
        position = {mid: n for n, mid in enumerate(ids)}
        acked += len(writer.acked)
        lost += sum(1 for mid, _, _ in writer.acked if mid not in position)
        order = [position[mid] for mid, _, _ in writer.acked if mid in position]
        reordered += sum(1 for a, b in itertools.pairwise(order) if a > b)
        seqs = {m.id: m.seq for m in stored}
        reordered += sum(1 for mid, seq, _ in writer.acked if mid in seqs and seqs[mid] != seq)
        unacked_present += sum(1 for mid in writer.failed if mid in position)
        unacked_absent += sum(1 for mid in writer.failed if mid not in position)
    all_acks = sorted(t for writer in writers for _, _, t in writer.acked)
    recovery = [min((t for t in all_acks if t >= up), default=float("inf")) - up for up in ups]
    await store.close()

    print(
        f"\nchaos {SECONDS:.0f}s, 32 writers, 3 restarts, {proxy.dropped} dropped connections: "
        f"acknowledged {acked}, lost {lost}, duplicated {duplicated}, reordered {reordered}; "
        f"not acknowledged {unacked_present + unacked_absent} ({unacked_present} stored, {unacked_absent} not); "
        f"server-up to first write {', '.join(f'{r:.2f}s' for r in recovery)}"
    )
    assert len(ups) == 3
    assert acked > 100
    assert (lost, duplicated, reordered) == (0, 0, 0)
    assert all(r < 15 for r in recovery)
