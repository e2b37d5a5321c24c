"""The HTTP API under load (``./dev bench --api``): ``convostore serve``'s application, run by
uvicorn in its own process on a loopback port, against concurrent HTTP clients.

1. **Mixed** (``--api-seconds``, 30 s by default): ``--api-clients`` clients (32), each with its
   own key-scoped user and session, loop over list (``GET /v1/sessions``, 20 per page), read
   (``GET /v1/sessions/{id}/messages``, the last 20) and append (``POST`` one message with its
   id); p50 and p99 of each, and requests/s.
2. **Appends** (a third of that time, at least 5 s): the same clients append only, through the
   API; then as many tasks append the same way through the library (``add_messages``) in this
   process. The ratio API / library is the cost of HTTP, JSON and authentication per append.

The clients (httpx, one connection each) run in this process and the server in another: on a
small machine they share its cores, so the figures are a floor for what a server alone does.
The schema (``bench_api``) is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from rich.table import Table

from convostore import NewMessage, PostgresSessionStore
from convostore.keys import create_key

from ._common import console

SCHEMA = "bench_api"
HISTORY = 40  # messages in each client's session before the run
OPS = ("list", "read", "append")
ROOT = Path(__file__).resolve().parents[1]  # where `python -m bench.api` finds the package


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_child(url: str, schema: str, port: int, pool: int) -> None:
    """The server process: the application uvicorn serves for ``convostore serve``, without
    per-request access logs (they would measure the terminal)."""
    import uvicorn

    from convostore.server import create_app

    store = PostgresSessionStore(url, schema=schema, apply_migrations=False, max_size=pool)
    uvicorn.run(
        create_app(store, owns_store=True),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


async def _prepare(url: str, clients: int) -> tuple[list[str], list[str]]:
    """A fresh schema, one user's key and one session (with some history) per client."""
    conn = await asyncpg.connect(url)
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    await conn.close()
    tokens, sessions = [], []
    async with PostgresSessionStore(url, schema=SCHEMA) as store:
        for i in range(clients):
            user = f"user-{i}"
            token, _ = await create_key(store, name=f"bench {i}", user=user)
            for j in range(3):  # something to list
                session = await store.create_session(user, "bench", {"n": j})
            await store.add_messages(
                session.id, [NewMessage("user" if k % 2 == 0 else "assistant", f"message {k}") for k in range(HISTORY)]
            )
            tokens.append(token)
            sessions.append(session.id)
    return tokens, sessions


async def _wait_ready(base: str, child: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60.0
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < deadline:
            if child.returncode is not None:
                raise RuntimeError(f"the API server exited with {child.returncode}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the API server did not become ready")


Op = Callable[[], Awaitable[None]]


def _client_ops(client: httpx.AsyncClient, session: str) -> dict[str, Op]:
    path = f"/v1/sessions/{session}/messages"

    async def list_() -> None:
        (await client.get("/v1/sessions", params={"limit": 20})).raise_for_status()

    async def read() -> None:
        (await client.get(path, params={"limit": 20})).raise_for_status()

    async def append() -> None:
        body = {"messages": [{"role": "user", "content": "how is my order doing?", "id": uuid.uuid4().hex}]}
        response = await client.post(path, json=body)
        if response.status_code != 201:
            raise RuntimeError(f"append: {response.status_code} {response.text[:200]}")

    return {"list": list_, "read": read, "append": append}


async def _drive(
    base: str, tokens: list[str], sessions: list[str], seconds: float, ops: tuple[str, ...]
) -> dict[str, list[float]]:
    """Every client loops over *ops* for *seconds*; the latencies (s) of each op."""
    latencies: dict[str, list[float]] = {op: [] for op in ops}
    stop = time.monotonic() + seconds

    async def one(token: str, session: str) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30.0) as client:
            table = _client_ops(client, session)
            i = 0
            while time.monotonic() < stop:
                op = ops[i % len(ops)]
                i += 1
                started = time.perf_counter()
                await table[op]()
                latencies[op].append(time.perf_counter() - started)

    await asyncio.gather(*(one(t, s) for t, s in zip(tokens, sessions, strict=True)))
    return latencies


async def _library_appends(url: str, sessions: list[str], seconds: float, pool: int) -> int:
    """Appends done in *seconds* by one task per session through the library."""
    count = 0
    async with PostgresSessionStore(url, schema=SCHEMA, apply_migrations=False, max_size=pool) as store:
        stop = time.monotonic() + seconds

        async def one(session: str) -> None:
            nonlocal count
            while time.monotonic() < stop:
                await store.add_messages(session, [NewMessage("user", "how is my order doing?", id=uuid.uuid4().hex)])
                count += 1

        await asyncio.gather(*(one(s) for s in sessions))
    return count


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def api_mode(url: str, clients: int = 32, seconds: float = 30.0, pool: int = 20) -> dict[str, Any]:
    """Run both phases against a server started here; return the figures (and print them)."""
    tokens, sessions = await _prepare(url, clients)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.api", url, SCHEMA, str(port), str(pool), cwd=ROOT
    )
    try:
        await _wait_ready(base, child)
        console.print(f"API load: {clients} clients, {seconds:g} s mixed (list, read, append), server on {base}")
        await _drive(base, tokens, sessions, 1.0, OPS)  # warm-up: connections, caches
        mixed = await _drive(base, tokens, sessions, seconds, OPS)
        append_seconds = max(5.0, seconds / 3)
        api_appends = await _drive(base, tokens, sessions, append_seconds, ("append",))
    finally:
        child.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully: the store closes
        try:
            await asyncio.wait_for(child.wait(), 30)
        except TimeoutError:
            child.kill()
            await child.wait()
    library = await _library_appends(url, sessions, append_seconds, pool)
    conn = await asyncpg.connect(url)
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    await conn.close()

    total = sum(len(v) for v in mixed.values())
    data: dict[str, Any] = {
        "clients": clients,
        "seconds": seconds,
        "requests_per_s": total / seconds,
        "ops": {
            op: {
                "count": len(v),
                "p50_ms": 1000 * statistics.median(v),
                "p99_ms": 1000 * _quantile(v, 0.99),
                "per_s": len(v) / seconds,
            }
            for op, v in mixed.items()
        },
        "append_seconds": append_seconds,
        "api_appends_per_s": len(api_appends["append"]) / append_seconds,
        "library_appends_per_s": library / append_seconds,
    }
    data["api_to_library"] = data["api_appends_per_s"] / data["library_appends_per_s"]
    table = Table(title=f"HTTP API, {clients} clients, {seconds:g} s mixed")
    for column in ("operation", "requests", "per s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for op, figures in data["ops"].items():
        table.add_row(
            op,
            f"{figures['count']:,}",
            f"{figures['per_s']:,.0f}",
            f"{figures['p50_ms']:.1f}",
            f"{figures['p99_ms']:.1f}",
        )
    console.print(table)
    console.print(
        f"appends only, {append_seconds:g} s: API {data['api_appends_per_s']:,.0f}/s, "
        f"library {data['library_appends_per_s']:,.0f}/s: API / library = {data['api_to_library']:.2f}x"
    )
    return data


if __name__ == "__main__":  # the server process: URL SCHEMA PORT POOL
    serve_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
