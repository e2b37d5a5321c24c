"""What both conformance harnesses (the Agents SDK's, and the frameworks') share: matching
test ids against classification tables, checking a downloaded sdist, and dropping a test's
stores and schemas."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from convostore import PostgresSessionStore


def matches(nodeid: str, pattern: str) -> bool:
    """A key matches its exact node id, every parametrization of a test ("file::test"), or
    as an fnmatch pattern (``*`` and ``?``; a ``[`` is literal)."""
    return (
        nodeid == pattern
        or nodeid.split("[", 1)[0] == pattern
        or fnmatch.fnmatchcase(nodeid, pattern.replace("[", "[[]"))
    )


def match(nodeid: str, table: dict[str, str]) -> str | None:
    """The reason of the first entry of *table* that *nodeid* matches."""
    for pattern, reason in table.items():
        if matches(nodeid, pattern):
            return reason
    return None


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def drop_stores(stores: Sequence[PostgresSessionStore], nodeid: str, url: str, app_name_prefix: str) -> None:
    """Close a test's *stores* (the pools of loops that are gone get their connections
    dropped), end any connection still tagged with one of their schemas, drop the schemas.
    Runs in a thread of its own: the test's loop may still be running."""
    schemas = [s.schema for s in stores]

    async def run() -> None:
        import asyncpg

        for store in stores:
            try:
                await asyncio.wait_for(store.close(), 30)
            except BaseException as exc:  # cleanup goes on; said, not swallowed
                print(f"[conformance] closing store {store.schema} of {nodeid}: {exc!r}", file=sys.stderr)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ANY($1::text[])",
                [app_name_prefix + s for s in schemas],
            )
            for schema in schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # our own generated name
        finally:
            await conn.close()

    error: list[BaseException] = []

    def in_thread() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=in_thread, name="conformance-cleanup")
    t.start()
    t.join(120)
    if error:
        print(f"[conformance] cleanup of {nodeid} failed: {error[0]!r}", file=sys.stderr)
