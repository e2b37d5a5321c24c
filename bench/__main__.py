"""Run the benchmark suite: ``./dev bench [--size quick|full|tiny] [--runs N]``.

Every system is measured in the same run, on the same server, each in its own schema;
figures are medians over ``--runs`` runs with their spread, and ratios compare systems
within a run. Prints tables, writes JSON and a PNG plot of throughput against concurrency.

Three further modes run instead of the suite: ``--citus [URL]`` (appends on undistributed and
distributed tables of a Citus cluster, and the task counts of the hot statements),
``--growth-10m`` (the last-20 read as the messages table grows to 10M rows) and ``--api``
(the HTTP API under load, see :mod:`bench.api`).
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
from rich.table import Table

from . import server as server_side
from . import workloads as w
from ._common import cell, console, ratio_cell, spread, verdict
from .systems import SYSTEMS, System

PEER_MODULES = {
    "sqlalchemy-sdk": "sqlalchemy",
    "langchain": "langchain_postgres",
    "convostore-langchain": "langchain_core",
    "convostore-sealed": "cryptography",
}
WINDOWS = "W4 windows"
WINDOW_TARGET = 1.25  # a window read / the plain last-20 read, same run
# convostore's LangChain adapter beside langchain-postgres: (workload, higher is better).
LANGCHAIN_ROWS = (("W1 sequential appends", True), ("W4 last 20 of long session", False), ("W5 whole session", False))
W2B = "W2b 32 tasks, one session"
W1_CPU = "W1 client CPU per append"
SEED_TARGET = 1.5  # W1: convostore / the seed's store, same run
# (workload, unit, higher is better, target ratio to the floor or None)
ROWS: list[tuple[str, str, bool, float | None]] = [
    ("W1 sequential appends", "/s", True, 0.6),
    (W1_CPU, "us", False, 1.5),
    ("W2 1 task", "/s", True, None),
    ("W2 8 tasks", "/s", True, None),
    ("W2 32 tasks", "/s", True, 1.5),
    ("W2 128 tasks", "/s", True, 2.0),
    (W2B, "/s", True, 1.0),
    ("W3 batch", "msg/s", True, 0.6),
    ("W4 last 20 of long session", "ms p50", False, 1.25),
    ("W5 whole session", "ms p50", False, 1.25),
    ("W6 10 recent sessions", "ms p50", False, 1.25),
    ("W7 delete idle sessions", "s", False, 1.5),
]
# The variants of convostore whose cost is shown relative to it, and the tolerance (10%:
# a throughput ratio >= 0.9, a latency ratio <= 1.1), which applies to COST_ROWS.
# Token counting and the search index have no target: their rows say what they cost.
COSTS: dict[str, float | None] = {
    "convostore-rls": 0.10,
    "convostore-sealed": 0.25,
    "convostore-tokens": None,
    "convostore-search": None,
}
COST_ROWS = ("W1 sequential appends", "W3 batch", "W4 last 20 of long session")
# Where each run keeps the cost rows measured in turns (workloads.paired_costs): the cost
# table judges those, since figures of systems measured one after another drift apart.
PAIRED = "cost rows in turns"
PGBENCH_CLIENTS = (1, 32)


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
        out[W1_CPU] = await w.w1_client_cpu(system, sizes)
        for tasks in sizes.w2_tasks:
            out[f"W2 {tasks} task" + ("s" if tasks > 1 else "")] = await w.w2_concurrent(system, sizes, tasks)
        out[W2B] = await w.w2b_one_session(system, sizes)
        out["W3 batch"] = await w.w3_batch(system, sizes)
        out["W4 last 20 of long session"] = await w.w4_last_n(system, sizes)
        out["W5 whole session"] = await w.w5_whole(system, sizes)
        out[WINDOWS] = await w.w4_windows(system, sizes)
        out["W6 10 recent sessions"] = await w.w6_recent(system, sizes)
        out["W7 delete idle sessions"] = await w.w7_delete(system, sizes)
        if extras:
            out["memory MB"] = await w.memory_mb(system, sizes)
            out["growth"] = await w.growth(system, sizes)
        console.print(f"  {name}: {time.perf_counter() - started:.1f}s", style="dim")
    finally:
        await system.stop()
    return out


async def run_paired(names: list[str], url: str, sizes: w.Sizes, pool: int) -> dict[str, dict[str, float]]:
    """The cost rows (W1, W3, W4) of convostore and its variants, measured in turns."""
    systems: dict[str, System] = {}
    try:
        for name in names:
            # W1, W3 and W4 run one call at a time: a small pool each keeps the variants
            # (all open at once) within the server's max_connections.
            systems[name] = SYSTEMS[name](url, f"bench_paired_{name.replace('-', '_')}", min(pool, 4))
            await systems[name].start()
        started = time.perf_counter()
        figures = await w.paired_costs(systems, sizes)
        console.print(f"  {', '.join(names)} in turns (cost rows): {time.perf_counter() - started:.1f}s", style="dim")
        return figures
    finally:
        for system in systems.values():
            await system.stop()


def pgbench(url: str, seconds: int, clients: int) -> float | None:
    """Single-row INSERT throughput by pgbench at *clients* clients: the server's physical reference."""
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
            [binary, "-n", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds), "-f", script.name],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        os.unlink(script.name)
        subprocess.run([psql, "-q", "-c", "DROP TABLE IF EXISTS bench_pgbench_t"], env=env, capture_output=True)
    match = re.search(r"tps = ([\d.]+)", done.stdout)
    return float(match.group(1)) if match else None


def _per_run_ratios(results: dict[str, list[dict[str, Any]]], ours: str, base: str) -> dict[str, list[float]]:
    """For each row, *ours* / *base* computed within each run (runs where both have a value)."""
    out: dict[str, list[float]] = {}
    for row, *_ in ROWS:
        per_run = [
            mine[row] / theirs[row]
            for mine, theirs in zip(results.get(ours, []), results.get(base, []), strict=False)
            if mine.get(row) and theirs.get(row)
        ]
        if per_run:
            out[row] = per_run
    return out


def report(results: dict[str, list[dict[str, Any]]], sizes: w.Sizes, meta: dict[str, Any]) -> dict[str, Any]:
    systems = list(results)
    values: dict[str, dict[str, list[float]]] = {
        name: {row: [r[row] for r in runs if r.get(row) is not None] for row, *_ in ROWS}
        for name, runs in results.items()
    }
    medians = {
        name: {row: (statistics.median(v) if v else None) for row, v in rows.items()} for name, rows in values.items()
    }
    spreads = {name: {row: spread(v) for row, v in rows.items() if v} for name, rows in values.items()}
    # Ratios convostore / floor, computed within each run, then the median across runs.
    ratios = _per_run_ratios(results, "convostore", "floor")

    several = meta["runs"] > 1
    table = Table(
        title=f"convostore benchmark ({meta['size']}, {meta['runs']} run(s), medians)",
        caption="(n%) after a figure: its spread over the runs, (max - min) / median; "
        "(a-b) after a ratio: its lowest and highest run"
        if several
        else None,
    )
    table.add_column("workload")
    table.add_column("unit")
    for name in systems:
        table.add_column(name, justify="right")
    table.add_column("convostore / floor", justify="right")
    table.add_column("target", justify="right")
    verdicts = {}
    for row, unit, higher, target in ROWS:
        if all(medians[n][row] is None for n in systems) and row.startswith("W2 "):
            continue  # a concurrency level this size does not run
        ratio = statistics.median(ratios[row]) if row in ratios else None
        shown = ""
        if ratio is not None and target is not None:
            verdicts[row], shown = verdict(ratio, target, higher)
        table.add_row(row, unit, *[cell(values[n][row], unit) for n in systems], ratio_cell(ratios.get(row, [])), shown)
    console.print(table)

    costs = cost_table(results, several)
    windows = window_table(results)
    langchain = langchain_table(results, medians)

    seed = _per_run_ratios(results, "convostore", "seed").get("W1 sequential appends")
    if seed:
        met, shown = verdict(statistics.median(seed), SEED_TARGET, True)
        verdicts["W1 vs the seed"] = met
        console.print(f"convostore vs the seed's store, W1: {ratio_cell(seed)} (target >= {SEED_TARGET}x) {shown}")

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
        growth = Table(title="W4 p50 ms as the messages table grows (must stay flat; first run only)")
        growth.add_column("system")
        for size in sizes.growth:
            growth.add_column(f"{size:,} rows", justify="right")
        growth.add_column(f"{sizes.growth[-1]:,} / {sizes.growth[0]:,}", justify="right")
        growth.add_column("peak MB reading a whole session of " + f"{sizes.memory_session:,}", justify="right")
        for name, r in extras.items():
            g = r["growth"]
            flat = g[sizes.growth[-1]] / g[sizes.growth[0]] if g[sizes.growth[0]] else float("nan")
            growth.add_row(name, *[f"{g[s]:.2f}" for s in sizes.growth], f"{flat:.2f}x", f"{r['memory MB']:.1f}")
        console.print(growth)

    pg: dict[str, Any] = {}
    for clients in PGBENCH_CLIENTS:
        tps = [t for t in meta.get("pgbench_runs", {}).get(str(clients), []) if t]
        if tps:
            pg[f"{clients} client" + ("s" if clients > 1 else "")] = spread(tps)
    if pg:
        line = ", ".join(
            f"{k} {v['median']:,.0f}/s" + (f" ({v['rel_range']:.0%})" if several else "") for k, v in pg.items()
        )
        console.print(f"pgbench, single-row INSERT (the server's physical reference): {line}")
        refs = []
        for row, key in (("W1 sequential appends", "1 client"), ("W2 32 tasks", "32 clients"), (W2B, "32 clients")):
            mine = medians.get("convostore", {}).get(row)
            if mine and key in pg:
                refs.append(f"{row} = {mine / pg[key]['median']:.2f}x pgbench {key}")
        if refs:
            console.print("  convostore: " + "; ".join(refs))
    console.print(f"parameters: {asdict(sizes)}", style="dim")
    return {
        "meta": meta,
        "parameters": asdict(sizes),
        "medians": medians,
        "spread": spreads,
        "ratios_to_floor": {k: statistics.median(v) for k, v in ratios.items()},
        "ratios_to_floor_spread": {k: spread(v) for k, v in ratios.items()},
        "targets_met": verdicts,
        "cost_vs_convostore": costs,
        "windows": windows,
        "langchain_adapter_vs_langchain_postgres": langchain,
        "convostore_vs_sqlalchemy": versus_peer,
        "pgbench": pg,
        "runs": results,
    }


def window_table(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Windowed reads against the plain last-20 read of the same session, within each run."""
    out: dict[str, Any] = {}
    table = Table(title=f"windowed reads: p50 ms, and window / last-20 in the same run (target <= {WINDOW_TARGET}x)")
    for column in (
        "system",
        "last 20",
        "20 turns",
        "tokens of 20",
        "turns / last",
        "target",
        "tokens / last",
        "target",
    ):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, runs in results.items():
        measured = [r[WINDOWS] for r in runs if r.get(WINDOWS)]
        if not measured:
            continue
        entry: dict[str, Any] = {}
        cells: list[str] = []
        for kind in ("turns", "tokens"):
            per_run = [m[kind] / m["last"] for m in measured]
            entry[kind] = spread(per_run)
            entry[kind]["met"], shown = verdict(statistics.median(per_run), WINDOW_TARGET, False)
            cells += [ratio_cell(per_run), shown]
        p50 = {k: statistics.median(m[k] for m in measured) for k in ("last", "turns", "tokens")}
        entry["p50_ms"] = p50
        out[name] = entry
        table.add_row(name, *(f"{p50[k]:.2f}" for k in ("last", "turns", "tokens")), *cells)
    if out:
        console.print(table)
    return out


def langchain_table(results: dict[str, list[dict[str, Any]]], medians: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """convostore's LangChain adapter / langchain-postgres, on the workloads both run."""
    ours, theirs = "convostore-langchain", "langchain"
    if ours not in results or theirs not in results:
        return {}
    table = Table(title="LangChain: convostore's PostgresChatMessageHistory beside langchain-postgres's")
    for column in ("workload", "convostore adapter", "langchain-postgres", "adapter advantage"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    out: dict[str, Any] = {}
    for row, higher in LANGCHAIN_ROWS:
        per_run = [
            (a[row] / b[row]) if higher else (b[row] / a[row])
            for a, b in zip(results[ours], results[theirs], strict=False)
            if a.get(row) and b.get(row)
        ]
        if not per_run:
            continue
        out[row] = spread(per_run)
        unit = "/s" if higher else "ms p50"
        mine, other = medians[ours][row], medians[theirs][row]
        table.add_row(row, f"{mine:,.2f} {unit}", f"{other:,.2f} {unit}", ratio_cell(per_run))
    console.print(table)
    return out


def cost_table(results: dict[str, list[dict[str, Any]]], several: bool) -> dict[str, Any]:
    """Row-level security, encryption, token counting and the search index: each variant /
    plain convostore, within each run."""
    variants = [name for name in COSTS if name in results and "convostore" in results]
    if not variants:
        return {}
    table = Table(
        title="what a capability costs the stores that use it: variant / convostore, same run",
        caption="W1, W3 and W4 measured with the systems taking turns (see bench/README.md)",
    )
    table.add_column("workload")
    table.add_column("unit")
    for name in variants:
        table.add_column(f"{name} / convostore", justify="right")
        table.add_column("target", justify="right")
    out: dict[str, Any] = {name: {} for name in variants}
    per_variant = {name: _per_run_ratios(results, name, "convostore") for name in variants}
    for name in variants:  # the cost rows: as measured in turns, where they were
        paired = [
            (mine[PAIRED], theirs[PAIRED])
            for mine, theirs in zip(results[name], results["convostore"], strict=False)
            if PAIRED in mine and PAIRED in theirs
        ]
        for row in COST_ROWS:
            if paired:
                per_variant[name][row] = [m[row] / t[row] for m, t in paired]
    for row, unit, higher, _ in ROWS:
        cells: list[str] = []
        for name in variants:
            runs = per_variant[name].get(row, [])
            entry: dict[str, Any] = spread(runs) if runs else {}
            shown = ""
            tolerance = COSTS[name]
            if runs and row in COST_ROWS and tolerance is not None:
                target = 1 - tolerance if higher else 1 + tolerance
                entry["target"] = target
                entry["met"], shown = verdict(statistics.median(runs), target, higher)
            if entry:
                out[name][row] = entry
            cells += [ratio_cell(runs), shown]
        if any(cells):
            table.add_row(row, unit, *cells)
    console.print(table)
    return out


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
    if sizes.w2b_tasks != 32:
        raise SystemExit(f"W2b is reported as {W2B!r}: keep w2b_tasks at 32")
    url = _url()
    conn = await asyncpg.connect(url)
    server = await conn.fetchval("SHOW server_version")
    await conn.close()
    wanted = args.systems.split(",") if args.systems else list(SYSTEMS)
    chosen = []
    for name in wanted:
        if name not in SYSTEMS:
            raise SystemExit(f"unknown system {name!r}: choose among {', '.join(SYSTEMS)}")
        module = PEER_MODULES.get(name)
        if module and importlib.util.find_spec(module) is None:
            console.print(
                f"skipping {name}: install the bench extra (pip install -e '.[bench,encryption]')", style="yellow"
            )
            continue
        chosen.append(name)
    meta: dict[str, Any] = {
        "size": args.size, "runs": args.runs, "server_version": server, "pool_size": args.pool,
        "python": platform.python_version(), "machine": f"{os.cpu_count()} cores", "systems": chosen,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    console.print(f"PostgreSQL {server}; systems: {', '.join(chosen)}; size {args.size}; runs {args.runs}")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    pgbench_runs: dict[str, list[float | None]] = {str(c): [] for c in PGBENCH_CLIENTS}
    for run in range(args.runs):
        console.print(f"run {run + 1}/{args.runs}")
        for name in chosen:
            extras = run == 0 and name in ("floor", "convostore") and not args.no_extras
            results[name].append(await run_system(name, url, sizes, args.pool, extras))
        paired = [name for name in chosen if name == "convostore" or name in COSTS]
        if "convostore" in paired and len(paired) > 1:
            for name, figures in (await run_paired(paired, url, sizes, args.pool)).items():
                results[name][-1][PAIRED] = figures
        if args.pgbench:  # in every run, beside the systems
            for clients in PGBENCH_CLIENTS:
                tps = await asyncio.to_thread(pgbench, url, 3 if args.size == "tiny" else 10, clients)
                pgbench_runs[str(clients)].append(tps)
            console.print(f"  pgbench: {pgbench_runs}", style="dim")
    if args.pgbench:
        meta["pgbench_runs"] = pgbench_runs
    data = report(results, sizes, meta)
    if args.pgbench:  # once, after the systems: the statements' server side
        served = await asyncio.to_thread(server_side.measure, url, seconds=2 if args.size == "tiny" else 8)
        if served:
            console.print(server_side.table(served))
            data["server_side"] = {label: {str(n): v for n, v in row.items()} for label, row in served.items()}
    return data | {"_results": results}


def _write_json(out: Path, kind: str, data: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out / f"bench-{kind}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    console.print(f"JSON: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(w.SIZES), default="quick", help="workload sizes (default quick)")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default 3)")
    parser.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--pool", type=int, default=20, help="connections per system (default 20)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where JSON and PNG go")
    parser.add_argument("--no-extras", action="store_true", help="skip the growth and memory measurements")
    parser.add_argument("--pgbench", action=argparse.BooleanOptionalAction, default=True, help="run pgbench too")
    parser.add_argument(
        "--citus", nargs="?", const="", metavar="URL",
        help="instead of the suite: appends on undistributed vs distributed tables and EXPLAIN task counts, "
        "on the Citus coordinator at URL (default $CONVOSTORE_CITUS_URL)",
    )  # fmt: skip
    parser.add_argument(
        "--growth-10m", action="store_true",
        help="instead of the suite: the last-20 read at 10k and at 10M messages (1M sessions; long, several GB)",
    )  # fmt: skip
    parser.add_argument(
        "--api", action="store_true",
        help="instead of the suite: the HTTP API under load (p50/p99 of list, read, append; API / library appends)",
    )  # fmt: skip
    parser.add_argument("--api-clients", type=int, default=32, help="concurrent HTTP clients (default 32)")
    parser.add_argument("--api-seconds", type=float, default=30.0, help="seconds of the mixed phase (default 30)")
    args = parser.parse_args(argv)
    if args.api:
        from .api import api_mode

        data = asyncio.run(api_mode(_url(), args.api_clients, args.api_seconds, args.pool))
        _write_json(args.out, "api", data)
        return 0
    if args.citus is not None or args.growth_10m:
        from . import scale

        if args.citus is not None:
            citus_url = args.citus or os.environ.get("CONVOSTORE_CITUS_URL")
            if not citus_url:
                parser.error("--citus needs a URL or $CONVOSTORE_CITUS_URL")
            data = asyncio.run(scale.citus_mode(citus_url, w.SIZES[args.size], args.runs, args.pool))
            _write_json(args.out, f"citus-{args.size}", data)
        if args.growth_10m:
            data = asyncio.run(scale.growth_10m(_url()))
            _write_json(args.out, "growth-10m", data)
        return 0
    data = asyncio.run(main_async(args))
    results = data.pop("_results")
    _write_json(args.out, args.size, data)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    png = args.out / f"w2-concurrency-{args.size}-{stamp}.png"
    if plot(results, w.SIZES[args.size], png):
        console.print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
