"""The server side of an append, by pgbench: convostore's statements beside two floors.

``python -m bench.server [--seconds N] [--clients 1,32]`` (``./dev bench`` runs it too).
Each statement appends one 200-byte message to one of 64 sessions per call, prepared
(``-M prepared``), in the same run, on the same server:

* **floor**: a one-row INSERT into a two-index table (no order, no session row);
* **integrity floor**: one statement that bumps the session's counter RETURNING the seq and
  inserts the message with it (per-session gap-free order under the row lock), on minimal
  tables;
* **convostore, lone append**: ``_sql.APPEND_ONE`` on a schema migrated by convostore (the
  statement a lone append sends);
* **convostore, function**: ``convostore_append(...)`` with one message (what a coalesced or
  forked-session append runs), same schema;
* **convostore, search index**: the lone append with the opt-in full-text index created.

The ratios to the integrity floor are what travel between machines (habit 18 of STYLE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
from rich.table import Table

from convostore import PostgresSessionStore
from convostore._sql import APPEND, APPEND_ONE, SEARCH_INDEX_CREATE, quote_ident

from ._common import console

SCHEMA = "bench_server_side"
SESSIONS = 64
CONTENT = "x" * 200
_ID = "\\set r random(1, 9000000000000000)\n\\set s random(1, 64)\n"

FLOOR_SETUP = """
DROP TABLE IF EXISTS {s}.floor_messages, {s}.floor_sessions, {s}.floor_counted;
CREATE TABLE {s}.floor_messages (id bigserial PRIMARY KEY, session_id text NOT NULL, content text NOT NULL);
CREATE INDEX ON {s}.floor_messages (session_id);
CREATE TABLE {s}.floor_sessions (id text PRIMARY KEY, last_seq bigint NOT NULL DEFAULT 0);
CREATE TABLE {s}.floor_counted (session_id text NOT NULL REFERENCES {s}.floor_sessions (id), seq bigint NOT NULL,
                                 id text NOT NULL, content text NOT NULL, PRIMARY KEY (session_id, seq));
INSERT INTO {s}.floor_sessions (id) SELECT 's' || g FROM generate_series(1, 64) g;
"""


@dataclass(frozen=True, slots=True)
class Statement:
    """One pgbench script: a label and the SQL of one call (``:s`` session, ``:r`` id)."""

    label: str
    sql: str
    search_index: bool = False


def _positional(sql: str, values: list[str]) -> str:
    """*sql* with ``$n`` replaced by pgbench's literal *values* (in order)."""
    return re.sub(r"\$(\d+)", lambda m: values[int(m.group(1)) - 1], sql)


def statements(schema: str) -> list[Statement]:
    quoted = quote_ident(schema)
    message = f"'{CONTENT}'"
    one = [
        "'default'", "'s' || :s", "NULL", "'m' || :r", "'user'", message,
        "NULL", "NULL", "NULL", "NULL", "NULL::bytea", "NULL::int", "NULL",
    ]  # fmt: skip
    function = [
        "'default'", "'s' || :s", "NULL", "false", "true", "ARRAY[1]", "ARRAY['s' || :s]", "ARRAY[NULL]::text[]",
        "ARRAY[NULL]::text[]", "ARRAY['main']", "ARRAY['m' || :r]", "ARRAY['user']", f"ARRAY[{message}]",
        "ARRAY[NULL]::text[]", "ARRAY[NULL]::text[]", "ARRAY[NULL]::text[]", "ARRAY[NULL]::text[]",
        "ARRAY[NULL]::bytea[]", "ARRAY[NULL]::int[]", "ARRAY[NULL]::text[]",
    ]  # fmt: skip
    lone = _positional(APPEND_ONE.replace("{s}", quoted), one).strip()
    return [
        Statement("floor: one-row INSERT", f"INSERT INTO {quoted}.floor_messages (session_id, content) "
                  f"VALUES ('s' || :s, {message})"),
        Statement("integrity floor: bump + INSERT, one statement",
                  f"WITH b AS (UPDATE {quoted}.floor_sessions SET last_seq = last_seq + 1 WHERE id = 's' || :s "
                  f"RETURNING last_seq) INSERT INTO {quoted}.floor_counted (session_id, seq, id, content) "
                  f"SELECT 's' || :s, b.last_seq, 'm' || :r, {message} FROM b"),
        Statement("convostore: lone append (APPEND_ONE)", lone),
        Statement("convostore: convostore_append()", _positional(APPEND.replace("{s}", quoted), function)),
        Statement("convostore: lone append, search index on", lone, search_index=True),
    ]  # fmt: skip


def _env(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    env = dict(os.environ, PGHOST=query.get("host", [parts.hostname or "localhost"])[0],
               PGPORT=str(parts.port or 5432), PGUSER=parts.username or "postgres",
               PGDATABASE=parts.path.lstrip("/") or "postgres")  # fmt: skip
    if parts.password:
        env["PGPASSWORD"] = parts.password
    return env


def _pgbench_binary() -> str | None:
    return shutil.which("pgbench") or next((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/pgbench")), None)


def run_pgbench(binary: str, url: str, sql: str, clients: int, seconds: int) -> tuple[float, float]:
    """(tps, mean latency in ms) of *sql* at *clients* clients for *seconds*."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(_ID + " ".join(sql.split()) + ";\n")
    try:
        done = subprocess.run(
            [binary, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds),
             "-f", script.name],
            env=_env(url), capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        os.unlink(script.name)
    tps = re.search(r"tps = ([\d.]+)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    if tps is None or latency is None:
        raise RuntimeError(f"pgbench said: {done.stdout}{done.stderr}")
    return float(tps.group(1)), float(latency.group(1))


async def _prepare(url: str) -> None:
    async with PostgresSessionStore(url, schema=SCHEMA) as store:
        for n in range(1, SESSIONS + 1):
            await store.create_session("bench", "bench", session_id=f"s{n}")
        await store.pool.execute(FLOOR_SETUP.replace("{s}", quote_ident(SCHEMA)))


async def _set_search_index(url: str, on: bool) -> None:
    conn = await asyncpg.connect(url)
    try:
        if on:
            await conn.execute(SEARCH_INDEX_CREATE.replace("{s}", quote_ident(SCHEMA)))
        else:
            await conn.execute(f"DROP INDEX IF EXISTS {quote_ident(SCHEMA)}.idx_messages_search")
        await conn.execute(f"VACUUM ANALYZE {quote_ident(SCHEMA)}.conversation_messages")
    finally:
        await conn.close()


async def _drop(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
    finally:
        await conn.close()


def measure(
    url: str, *, seconds: int = 8, clients: tuple[int, ...] = (1, 32)
) -> dict[str, dict[int, tuple[float, float]]]:
    """pgbench figures per statement and client count: ``{label: {clients: (tps, ms)}}``
    (empty without pgbench)."""
    binary = _pgbench_binary()
    if binary is None:
        console.print("pgbench not found: the server-side table is skipped", style="yellow")
        return {}
    asyncio.run(_drop(url))
    asyncio.run(_prepare(url))
    out: dict[str, dict[int, tuple[float, float]]] = {}
    try:
        for statement in statements(SCHEMA):
            if statement.search_index:
                asyncio.run(_set_search_index(url, True))
            out[statement.label] = {n: run_pgbench(binary, url, statement.sql, n, seconds) for n in clients}
    finally:
        asyncio.run(_drop(url))
    return out


def table(figures: dict[str, dict[int, tuple[float, float]]]) -> Table:
    """The figures with each statement's cost relative to the integrity floor (same run)."""
    base = figures.get("integrity floor: bump + INSERT, one statement", {})
    counts = sorted({n for row in figures.values() for n in row})
    out = Table(title="the server side of one append (pgbench -M prepared, same run)")
    out.add_column("statement")
    for n in counts:
        out.add_column(f"{n} client{'s' if n > 1 else ''}: ms, tps", justify="right")
        out.add_column(f"x integrity floor ({n})", justify="right")
    for label, row in figures.items():
        cells = []
        for n in counts:
            tps, ms = row[n]
            cells += [f"{ms:.3f}, {tps:,.0f}", f"{base[n][0] / tps:.2f}x" if n in base else ""]
        out.add_row(label, *cells)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", default="1,32", help="comma-separated client counts")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    if not url:
        from convostore.embedded import embedded_url

        url = embedded_url()
    figures = measure(url, seconds=args.seconds, clients=tuple(int(c) for c in args.clients.split(",")))
    if figures:
        console.print(table(figures))


if __name__ == "__main__":
    main()
