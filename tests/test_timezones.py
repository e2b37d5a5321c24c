"""Client time zones must not matter: times come from the server, in UTC."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SCENARIO = """
import asyncio, sys
from datetime import timedelta
from convostore import PostgresSessionStore, cleanup_old_sessions

async def main() -> None:
    async with PostgresSessionStore(sys.argv[1], schema=sys.argv[2]) as store:
        s = await store.create_session("u", "a")
        m = await store.add_message(s.id, "user", "just now")
        assert m.created_at.utcoffset() == timedelta(0), m.created_at
        # A session written a moment ago is never "old", whatever the client's zone.
        assert await cleanup_old_sessions(store, days_old=0.001) == 0
        assert await store.get_session(s.id) is not None

asyncio.run(main())
"""


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Tokyo", "Pacific/Kiritimati"])
def test_store_behaves_the_same_in_any_client_time_zone(database_url: str, schema_name: str, tz: str) -> None:
    env = dict(os.environ, TZ=tz)
    done = subprocess.run(
        [sys.executable, "-c", _SCENARIO, database_url, schema_name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
