"""The benchmark suite runs end to end at a tiny size (no timing is asserted here). The Citus
mode and the 10M-row growth check are long and need their own servers: not run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.single_node
def test_benchmark_suite_runs_at_tiny_size(database_url: str, tmp_path: Path) -> None:
    env = dict(os.environ, DATABASE_URL=database_url, COLUMNS="300")  # every system's column, headers whole
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "tiny", "--runs", "2", "--out", str(tmp_path), "--no-pgbench"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = tmp_path.glob("bench-tiny-*.json")
    data = json.loads(report.read_text())
    systems = data["meta"]["systems"]
    assert {
        "floor", "convostore", "convostore-rls", "convostore-sealed", "convostore-tokens", "convostore-search",
        "convostore-sdk", "seed",
    } <= set(systems)  # fmt: skip
    workloads = (
        "W1 sequential appends",
        "W1 client CPU per append",
        "W2b 32 tasks, one session",
        "W3 batch",
        "W4 last 20 of long session",
        "W7 delete idle sessions",
    )
    for name in systems:
        for workload in workloads:
            assert data["medians"][name][workload] > 0, (name, workload)
            cell = data["spread"][name][workload]
            assert len(cell["runs"]) == 2
            assert cell["min"] <= data["medians"][name][workload] <= cell["max"], (name, workload)
    assert set(data["ratios_to_floor"]) >= {"W1 sequential appends", "W2b 32 tasks, one session"}
    assert len(data["ratios_to_floor_spread"]["W4 last 20 of long session"]["runs"]) == 2
    for variant in ("convostore-rls", "convostore-sealed", "convostore-tokens", "convostore-search"):
        costs = data["cost_vs_convostore"][variant]
        for workload in ("W1 sequential appends", "W3 batch", "W4 last 20 of long session"):
            assert costs[workload]["median"] > 0, (variant, workload)
            # Targets for row-level security and sealing; the others say what they cost.
            assert ("met" in costs[workload]) == (variant in ("convostore-rls", "convostore-sealed")), variant
    assert list(tmp_path.glob("w2-concurrency-tiny-*.png"))
    assert "convostore / floor" in done.stdout
    assert "convostore-rls / convostore" in done.stdout
    # The runtime role of convostore-rls is dropped afterwards.
    roles = subprocess.run(
        [sys.executable, "-c", _ROLES_LEFT, database_url], capture_output=True, text=True, check=True, timeout=60
    )
    assert roles.stdout.strip() == "0"


_ROLES_LEFT = """
import asyncio, sys, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    roles = ["bench_convostore_rls_owner", "bench_convostore_rls_app"]
    print(await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", roles))
    await conn.close()
asyncio.run(main())
"""


def test_citus_mode_needs_a_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONVOSTORE_CITUS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--citus", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "--citus needs a URL" in done.stderr


@pytest.mark.slow
@pytest.mark.single_node
def test_api_load_mode_runs(database_url: str, tmp_path: Path) -> None:
    env = dict(os.environ, DATABASE_URL=database_url)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--api", "--api-clients", "4", "--api-seconds", "2", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = tmp_path.glob("bench-api-*.json")
    data = json.loads(report.read_text())
    for op in ("list", "read", "append"):
        figures = data["ops"][op]
        assert figures["count"] > 0, op
        assert 0 < figures["p50_ms"] <= figures["p99_ms"], op
    assert data["api_appends_per_s"] > 0
    assert data["library_appends_per_s"] > 0
    assert "API / library" in done.stdout


@pytest.mark.single_node
async def test_the_server_side_statements_append_what_they_say(database_url: str) -> None:
    """bench.server's pgbench scripts, run once each with the values pgbench would give."""
    from bench import server

    await server._drop(database_url)
    await server._prepare(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        for n, statement in enumerate(server.statements(server.SCHEMA), start=1):
            await conn.execute(statement.sql.replace(":s", "7").replace(":r", str(n)))
        q = f'"{server.SCHEMA}"'
        assert await conn.fetchval(f"SELECT count(*) FROM {q}.floor_messages") == 1
        assert await conn.fetchval(f"SELECT last_seq FROM {q}.floor_sessions WHERE id = 's7'") == 1
        stored = await conn.fetch(f"SELECT seq, id FROM {q}.conversation_messages WHERE session_id = 's7' ORDER BY seq")
        assert [(r["seq"], r["id"]) for r in stored] == [(1, "m3"), (2, "m4"), (3, "m5")]
        assert await conn.fetchval(f"SELECT last_seq FROM {q}.agent_sessions WHERE id = 's7'") == 3
    finally:
        await conn.close()
        await server._drop(database_url)
