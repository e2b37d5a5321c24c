"""The core cases behind a real pgbouncer in transaction pooling mode.

``./dev test`` installs Debian's pgbouncer when it is missing and it can (root with apt).
Without pgbouncer this module fails, loudly, unless ``CONVOSTORE_NO_PGBOUNCER=1`` says to
skip it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from convostore import NewMessage, PostgresSessionStore, SessionNotFound


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pgbouncer_url(database_url: str) -> Iterator[str]:
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if binary is None:
        if os.environ.get("CONVOSTORE_NO_PGBOUNCER") == "1":
            pytest.skip("CONVOSTORE_NO_PGBOUNCER=1: pgbouncer tests skipped on request")
        pytest.fail("pgbouncer is not installed (./dev test installs it with apt when run as root)")
    upstream = urlsplit(database_url)
    host = parse_qs(upstream.query).get("host", [upstream.hostname or "127.0.0.1"])[0]
    user = upstream.username or "postgres"
    dbname = upstream.path.lstrip("/") or "postgres"
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="convostore-pgbouncer-", dir="/tmp"))
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""
[databases]
convostore = host={host} port={upstream.port or 5432} user={user} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/users.txt
pool_mode = transaction
default_pool_size = 8
max_client_conn = 200
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    command = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # pgbouncer refuses to run as root: run it unprivileged, preferably as the embedded
        # server's own user, which can reach that server's unix socket.
        runner = next(
            (name for name in ("pgserver", "postgres", "nobody") if _user_exists(name)),
            "nobody",
        )
        os.chmod(workdir, 0o777)
        for f in workdir.iterdir():
            os.chmod(f, 0o666)
        command = ["runuser", "-u", runner, "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if process.poll() is not None:
            out = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"pgbouncer exited: {out}")
        time.sleep(0.05)
    try:
        yield f"postgresql://{user}@127.0.0.1:{port}/convostore"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


async def test_core_cases_behind_pgbouncer_in_transaction_mode(pgbouncer_url: str, schema_name: str) -> None:
    async with PostgresSessionStore(pgbouncer_url, schema=schema_name, pgbouncer=True, max_size=16) as store:
        assert all(s.applied_at is not None for s in await store.migration_status())
        session = await store.create_session("alice", "agent", {"title": "via pgbouncer"})
        first = await store.add_message(session.id, "user", "hello\x00 through pgbouncer")
        assert first.seq == 1
        # Concurrent appends (coalesced into multi-session statements) from 32 tasks.
        others = [(await store.create_session("alice", "agent")).id for _ in range(8)]
        await asyncio.gather(
            *(store.add_message(others[i % 8], "user", f"m{i}", message_id=f"id-{i}") for i in range(200))
        )
        for sid in others:
            stored = await store.get_messages(sid)
            assert [m.seq for m in stored] == list(range(1, 26))
        again = await store.add_message(others[0], "user", "m0", message_id="id-0")  # a retry: no duplicate
        assert again.seq == 1
        latest = await store.get_messages(session.id, limit=5)
        assert [m.content for m in latest] == ["hello\x00 through pgbouncer"]
        listed = await store.get_user_sessions("alice", limit=3)
        assert len(listed) == 3
        popped = await store.pop_message(session.id)
        assert popped is not None
        assert popped.content == "hello\x00 through pgbouncer"
        with pytest.raises(SessionNotFound):
            await store.add_messages("missing", [NewMessage("user", "x")])
        assert await store.delete_session(session.id) is True
