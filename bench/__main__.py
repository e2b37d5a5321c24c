"""Run the benchmark suite: ``./dev bench [--size quick|full|tiny] [--runs N]``.

Every system is measured in the same run, on the same server, each in its own schema;
figures are medians over ``--runs`` runs, and ratios compare systems within a run. Prints a
table, writes JSON and a PNG plot of throughput against concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from rich.console import Console
from rich.table import Table

from . import workloads as w
from .systems import SYSTEMS, System

console = Console(highlight=False, width=max(150, Console().width))

PEER_MODULES = {"sqlalchemy-sdk": "sqlalchemy", "langchain": "langchain_postgres"}
# (workload, unit, higher is better, target ratio to the floor or None)
ROWS: list[tuple[str, str, bool, float | None]] = [
    ("W1 sequential appends", "/s", True, 0.8),
    ("W2 1 task", "/s", True, None),
    ("W2 8 tasks", "/s", True, None),
    ("W2 32 tasks", "/s", True, 3.0),
    ("W2 128 tasks", "/s", True, None),
    ("W3 batch", "msg/s", True, 0.8),
    ("W4 last 20 of long session", "ms p50", False, 1.25),
    ("W5 whole session", "ms p50", False, 1.25),
    ("W6 10 recent sessions", "ms p50", False, 1.25),
    ("W7 delete idle sessions", "s", False, 1.5),
]


def _url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from convostore.embedded import embedded_url

    return embedded_url()


async def run_system(name: str, url: str, sizes: w.Sizes, pool: int, extras: bool) -> dict[str, Any]:
    system: System = SYSTEMS[name](url, f"bench_{name.replace('-', '_')}", pool)
    await system.start()
    out: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        out["W1 sequential appends"] = await w.w1_sequential(system, sizes)
        for tasks in sizes.w2_tasks:
            out[f"W2 {tasks} task" + ("s" if tasks > 1 else "")] = await w.w2_concurrent(system, sizes, tasks)
        out["W3 batch"] = await w.w3_batch(system, sizes)
        out["W4 last 20 of long session"] = await w.w4_last_n(system, sizes)
        out["W5 whole session"] = await w.w5_whole(system, sizes)
        out["W6 10 recent sessions"] = await w.w6_recent(system, sizes)
        out["W7 delete idle sessions"] = await w.w7_delete(system, sizes)
        if extras:
            out["memory MB"] = await w.memory_mb(system, sizes)
            out["growth"] = await w.growth(system, sizes)
        console.print(f"  {name}: {time.perf_counter() - started:.1f}s", style="dim")
    finally:
        await system.stop()
    return out


def pgbench(url: str, seconds: int) -> float | None:
    """Single-row INSERT throughput at 32 clients by pgbench: the server's own limit."""
    binary = shutil.which("pgbench") or next((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/pgbench")), None)
    if binary is None:
        return None
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    env = dict(os.environ, PGHOST=host, PGPORT=str(parts.port or 5432), PGUSER=parts.username or "postgres",
               PGDATABASE=parts.path.lstrip("/") or "postgres")  # fmt: skip
    if parts.password:
        env["PGPASSWORD"] = parts.password
    setup = (
        "DROP TABLE IF EXISTS bench_pgbench_t; "
        "CREATE TABLE bench_pgbench_t (id bigserial PRIMARY KEY, session_id text, content text)"
    )
    psql = shutil.which("psql") or str(Path(binary).with_name("psql"))
    subprocess.run([psql, "-q", "-c", setup], env=env, check=True, capture_output=True)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO bench_pgbench_t (session_id, content) VALUES ('s' || :client_id, 'message');\n")
    try:
        done = subprocess.run(
            [binary, "-n", "-c", "32", "-j", "2", "-T", str(seconds), "-f", script.name],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        os.unlink(script.name)
        subprocess.run([psql, "-q", "-c", "DROP TABLE IF EXISTS bench_pgbench_t"], env=env, capture_output=True)
    match = re.search(r"tps = ([\d.]+)", done.stdout)
    return float(match.group(1)) if match else None


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit.startswith("ms") or unit == "s":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"{value:,.0f}"


def report(results: dict[str, list[dict[str, Any]]], sizes: w.Sizes, meta: dict[str, Any]) -> dict[str, Any]:
    systems = list(results)
    medians: dict[str, dict[str, float | None]] = {}
    ratios: dict[str, list[float]] = {}
    for name, runs in results.items():
        medians[name] = {}
        for row, *_ in ROWS:
            values = [r[row] for r in runs if r.get(row) is not None]
            medians[name][row] = statistics.median(values) if values else None
    # Ratios convostore / floor, computed within each run, then the median across runs.
    for row, *_ in ROWS:
        per_run = []
        for ours, floor in zip(results.get("convostore", []), results.get("floor", []), strict=False):
            if ours.get(row) and floor.get(row):
                per_run.append(ours[row] / floor[row])
        if per_run:
            ratios[row] = per_run

    table = Table(title=f"convostore benchmark ({meta['size']}, {meta['runs']} run(s), medians)")
    table.add_column("workload")
    table.add_column("unit")
    for name in systems:
        table.add_column(name, justify="right")
    table.add_column("convostore / floor", justify="right")
    table.add_column("target", justify="right")
    verdicts = {}
    for row, unit, higher, target in ROWS:
        if all(medians[n][row] is None for n in systems) and row.startswith("W2"):
            continue  # a concurrency level this size does not run
        ratio = statistics.median(ratios[row]) if row in ratios else None
        verdict = ""
        if ratio is not None and target is not None:
            ok = ratio >= target if higher else ratio <= target
            verdicts[row] = ok
            verdict = f"{'>=' if higher else '<='} {target}x {'[green]met[/]' if ok else '[red]missed[/]'}"
        table.add_row(
            row, unit, *[_fmt(medians[n][row], unit) for n in systems],
            "" if ratio is None else f"{ratio:.2f}x", verdict,
        )  # fmt: skip
    console.print(table)

    peer = "sqlalchemy-sdk"
    versus_peer: dict[str, float] = {}
    if peer in medians and "convostore" in medians:
        for row, higher in (("W2 32 tasks", True), ("W7 delete idle sessions", False)):
            mine, theirs = medians["convostore"][row], medians[peer][row]
            if mine and theirs:
                versus_peer[row] = mine / theirs if higher else theirs / mine
        console.print(
            "convostore vs the SDK's SQLAlchemySession (target >= 10x): "
            + ", ".join(f"{k}: {v:.1f}x" for k, v in versus_peer.items())
        )

    extras = {n: runs[0] for n, runs in results.items() if "growth" in runs[0]}
    if extras:
        growth = Table(title="W4 p50 ms as the messages table grows (must stay flat)")
        growth.add_column("system")
        for size in sizes.growth:
            growth.add_column(f"{size:,} rows", justify="right")
        growth.add_column("peak MB reading a whole session of " + f"{sizes.memory_session:,}", justify="right")
        for name, r in extras.items():
            growth.add_row(name, *[f"{r['growth'][s]:.2f}" for s in sizes.growth], f"{r['memory MB']:.1f}")
        console.print(growth)
    if meta.get("pgbench_tps"):
        console.print(f"pgbench, single-row INSERT, 32 clients: {meta['pgbench_tps']:,.0f}/s (the server's own limit)")
    console.print(f"parameters: {asdict(sizes)}", style="dim")
    return {
        "meta": meta,
        "parameters": asdict(sizes),
        "medians": medians,
        "ratios_to_floor": {k: statistics.median(v) for k, v in ratios.items()},
        "targets_met": verdicts,
        "convostore_vs_sqlalchemy": versus_peer,
        "runs": results,
    }


def plot(results: dict[str, list[dict[str, Any]]], sizes: w.Sizes, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, runs in results.items():
        ys = [statistics.median(r[f"W2 {t} task" + ("s" if t > 1 else "")] for r in runs) for t in sizes.w2_tasks]
        ax.plot(sizes.w2_tasks, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(sizes.w2_tasks), [str(t) for t in sizes.w2_tasks])
    ax.set_xlabel("concurrent tasks")
    ax.set_ylabel("appends per second")
    ax.set_title("W2: concurrent appends (median of runs)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = w.SIZES[args.size]
    url = _url()
    conn = await asyncpg.connect(url)
    server = await conn.fetchval("SHOW server_version")
    await conn.close()
    wanted = args.systems.split(",") if args.systems else list(SYSTEMS)
    chosen = []
    for name in wanted:
        module = PEER_MODULES.get(name)
        if module and importlib.util.find_spec(module) is None:
            console.print(f"skipping {name}: install the bench extra (pip install -e '.[bench]')", style="yellow")
            continue
        chosen.append(name)
    meta = {
        "size": args.size, "runs": args.runs, "server_version": server, "pool_size": args.pool,
        "python": platform.python_version(), "machine": f"{os.cpu_count()} cores", "systems": chosen,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    console.print(f"PostgreSQL {server}; systems: {', '.join(chosen)}; size {args.size}; runs {args.runs}")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    for run in range(args.runs):
        console.print(f"run {run + 1}/{args.runs}")
        for name in chosen:
            extras = run == 0 and name in ("floor", "convostore") and not args.no_extras
            results[name].append(await run_system(name, url, sizes, args.pool, extras))
    if args.pgbench:
        meta["pgbench_tps"] = pgbench(url, 3 if args.size == "tiny" else 10)
    return report(results, sizes, meta) | {"_results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(w.SIZES), default="quick", help="workload sizes (default quick)")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default 3)")
    parser.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--pool", type=int, default=20, help="connections per system (default 20)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where JSON and PNG go")
    parser.add_argument("--no-extras", action="store_true", help="skip the growth and memory measurements")
    parser.add_argument("--pgbench", action=argparse.BooleanOptionalAction, default=True, help="run pgbench too")
    args = parser.parse_args(argv)
    data = asyncio.run(main_async(args))
    results = data.pop("_results")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    json_path = args.out / f"bench-{args.size}-{stamp}.json"
    json_path.write_text(json.dumps(data, indent=2, default=str))
    console.print(f"JSON: {json_path}")
    png = args.out / f"w2-concurrency-{args.size}-{stamp}.png"
    if plot(results, w.SIZES[args.size], png):
        console.print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
