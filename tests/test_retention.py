"""Retention: idle cleanup beside live writers, TTL expiry, sweepers, erasure."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import timedelta

from convostore import PostgresSessionStore, SessionNotFound


async def _age(store: PostgresSessionStore, interval: str, ids: list[str] | None = None) -> None:
    sql = f"UPDATE \"{store.schema}\".agent_sessions SET updated_at = now() - interval '{interval}'"
    if ids is None:
        await store.pool.execute(sql)
    else:
        await store.pool.execute(sql + " WHERE id = ANY($1::text[])", ids)


async def test_sliding_ttl_is_renewed_by_writes_and_fixed_expiry_is_not(store: PostgresSessionStore) -> None:
    sliding = await store.create_session("u", "a", ttl=3600)
    fixed = await store.create_session("u", "a", expires_in=3600)
    plain = await store.create_session("u", "a")
    assert sliding.expires_at is not None
    assert fixed.expires_at is not None
    assert plain.expires_at is None
    assert timedelta(minutes=59) < sliding.expires_at - sliding.created_at <= timedelta(hours=1)
    await asyncio.sleep(0.01)
    await store.add_message(sliding.id, "user", "keeps it alive")
    await store.add_message(fixed.id, "user", "does not")
    after_sliding, after_fixed = await store.get_session(sliding.id), await store.get_session(fixed.id)
    assert after_sliding is not None
    assert after_sliding.expires_at is not None
    assert after_fixed is not None
    assert after_sliding.expires_at > sliding.expires_at
    assert after_fixed.expires_at == fixed.expires_at
    cleared = await store.set_expiry(sliding.id)
    assert cleared.expires_at is None
    later = await store.set_expiry(plain.id, expires_in=timedelta(days=1))
    assert later.expires_at is not None


async def test_delete_expired_sessions_only_deletes_expired_ones(store: PostgresSessionStore) -> None:
    gone = await store.create_session("u", "a", expires_in=0.001)
    await store.add_message(gone.id, "user", "bye")
    kept = await store.create_session("u", "a", ttl=3600)
    forever = await store.create_session("u", "a")
    await asyncio.sleep(0.05)
    assert await store.delete_expired_sessions() == 1
    assert await store.get_session(gone.id) is None
    assert await store.get_session(kept.id) is not None
    assert await store.get_session(forever.id) is not None


async def test_background_sweeper_in_an_application(store: PostgresSessionStore) -> None:
    ids = [(await store.create_session("u", "a", expires_in=0.001)).id for _ in range(5)]
    sweeper = store.start_sweeper(0.02)
    assert store.start_sweeper(0.02) is sweeper
    for _ in range(200):
        if sweeper.deleted == 5:
            break
        await asyncio.sleep(0.02)
    await store.stop_sweeper()
    assert not sweeper.running
    assert sweeper.deleted == 5
    assert all([await store.get_session(i) is None for i in ids])


def test_two_processes_sweeping_at_once_delete_each_session_once(database_url: str, schema_name: str) -> None:
    async def prepare() -> None:
        async with PostgresSessionStore(database_url, schema=schema_name) as store:
            await store.pool.execute(
                f'INSERT INTO "{schema_name}".agent_sessions (tenant_id, id, user_id, agent_name, expires_at) '
                "SELECT 'default', 'exp-' || g, 'u', 'a', now() - interval '1 minute' FROM generate_series(1, 3000) g"
            )
            await store.pool.execute(
                f'INSERT INTO "{schema_name}".conversation_messages '
                "(tenant_id, session_id, seq, id, user_id, role, content) "
                "SELECT 'default', 'exp-' || g, 1, 'm', 'u', 'user', 'x' FROM generate_series(1, 3000) g"
            )

    asyncio.run(prepare())
    env = dict(os.environ, DATABASE_URL=database_url, CONVOSTORE_SCHEMA=schema_name)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "convostore", "sweep", "--batch-size", "50"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    counts = [int(re.search(r"deleted (\d+) expired", out).group(1)) for out, _ in outputs]  # type: ignore[union-attr]
    assert sum(counts) == 3000, counts

    async def remaining() -> int:
        async with PostgresSessionStore(database_url, schema=schema_name) as store:
            return int(await store.pool.fetchval(f'SELECT count(*) FROM "{schema_name}".agent_sessions'))

    assert asyncio.run(remaining()) == 0


async def test_cleanup_beside_live_writers_loses_no_acknowledged_message(store: PostgresSessionStore) -> None:
    """Writers append to sessions that were idle when cleanup started. Every session that
    got an acknowledged append must survive with every acknowledged message; and appends
    to other sessions keep completing while cleanup runs."""
    idle = [(await store.create_session("u", "a")).id for _ in range(400)]
    busy = [(await store.create_session("u", "a")).id for _ in range(4)]
    await _age(store, "40 days", idle)
    targets = idle[:40]
    acked: dict[str, list[str]] = {}
    during_cleanup = 0
    cleaning = asyncio.Event()
    done = asyncio.Event()

    async def writer(w: int) -> None:
        nonlocal during_cleanup
        i = 0
        while not done.is_set():
            sid = targets[(w * 7 + i) % len(targets)] if i % 2 else busy[w % len(busy)]
            i += 1
            try:
                m = await store.add_message(sid, "user", f"{w}-{i}")
            except SessionNotFound:
                continue  # deleted before this append: not acknowledged, not lost
            acked.setdefault(sid, []).append(m.id)
            if cleaning.is_set():
                during_cleanup += 1
            await asyncio.sleep(0)

    writers = [asyncio.create_task(writer(w)) for w in range(8)]
    await asyncio.sleep(0.05)
    cleaning.set()
    deleted = await store.delete_idle_sessions(timedelta(days=30), batch_size=10)
    done.set()
    await asyncio.gather(*writers)

    assert during_cleanup > 0, "appends must proceed while cleanup runs"
    assert 360 <= deleted <= 400
    for sid, ids in acked.items():
        stored = await store.get_messages(sid)
        assert stored, f"session {sid} had acknowledged appends but was deleted"
        assert {m.id for m in stored} >= set(ids)


async def test_delete_user_in_batches_reports_what_was_removed(store: PostgresSessionStore) -> None:
    for i in range(7):
        s = await store.create_session("erase-me", "a")
        await store.add_messages(s.id, [{"role": "user", "content": str(j)} for j in range(i)])
    keep = await store.create_session("keep-me", "a")
    await store.add_message(keep.id, "user", "mine")
    batches: list[int] = []
    report = await store.delete_user("erase-me", batch_size=3, on_batch=batches.append)
    assert (report.sessions, report.messages) == (7, sum(range(7)))
    assert batches == [3, 3, 1]
    assert await store.get_user_sessions("erase-me") == []
    assert len(await store.get_messages(keep.id)) == 1
