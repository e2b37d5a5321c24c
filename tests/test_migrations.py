"""Migrations: idempotent, recorded, and safe when several processes start together."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import pytest

from convostore import MIGRATIONS, MigrationError, PostgresSessionStore, Window
from convostore._sql import FUNCTIONS
from convostore.migrations import install_functions


async def test_migrations_are_recorded_and_rerun_is_a_no_op(store: PostgresSessionStore) -> None:
    status = await store.migration_status()
    assert [(s.version, s.name) for s in status] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(s.applied_at is not None and s.applied_at.tzinfo is not None for s in status)
    assert await store.migrate() == []
    assert await store.migrate() == []
    assert await store.migration_status() == status


async def test_migration_sql_itself_can_be_applied_twice(store: PostgresSessionStore) -> None:
    # Each migration is written idempotently (IF NOT EXISTS), so re-applying it, for
    # instance after a ledger was lost, is harmless.
    quoted = f'"{store.schema}"'
    async with store.pool.acquire() as conn:
        for migration in MIGRATIONS:
            for statement in migration.statements(quoted):
                await conn.execute(statement)


async def test_the_functions_are_planned_as_their_tables_need(store: PostgresSessionStore) -> None:
    """On one node the read function's statements are planned once per connection. On
    distributed tables the three functions that calls are delegated to plan each statement with
    the call's values (Citus plans a distributed statement from them, and a reused generic
    plan grew the node's process on every run): distributing sets that, and so does installing
    a function again (which resets its settings to the one-node ones of its text). The append
    function of distributed tables keeps one plan per statement on both (its statements name a
    shard's own tables, which Citus does not plan)."""
    plans = (
        "SELECT p.proname, s.setting FROM pg_proc p "
        "LEFT JOIN LATERAL (SELECT c FROM unnest(p.proconfig) c WHERE c LIKE 'plan_cache_mode=%') s(setting) ON true "
        "WHERE p.pronamespace = $1::regnamespace AND p.proname LIKE 'convostore%' ORDER BY p.proname"
    )
    quoted = f'"{store.schema}"'
    custom, generic = "plan_cache_mode=force_custom_plan", "plan_cache_mode=force_generic_plan"
    one_node = [
        ("convostore_append", None),
        ("convostore_append_sharded", generic),
        ("convostore_compact", None),
        ("convostore_hold_shards", None),
        ("convostore_read", generic),
    ]
    delegated = ("convostore_append", "convostore_compact", "convostore_read")
    distributed = [(name, custom if name in delegated else setting) for name, setting in one_node]
    expected = distributed if store._scope.runner.distributed else one_node
    async with store.pool.acquire() as conn:
        assert [tuple(r) for r in await conn.fetch(plans, quoted)] == expected
        # As if another release had changed these two functions' texts.
        await conn.execute(
            f"UPDATE {quoted}.convostore_functions SET hash = 'older' WHERE name = ANY ($1)",
            ["convostore_read", "convostore_compact"],
        )
        assert await install_functions(conn, store.schema) == ["convostore_read", "convostore_compact"]
        assert await install_functions(conn, store.schema) == []
        assert [tuple(r) for r in await conn.fetch(plans, quoted)] == expected
        await conn.execute(f"DELETE FROM {quoted}.convostore_functions WHERE name = 'convostore_append'")
    assert await store.migrate() == []  # no migration pending, and yet the function is installed
    async with store.pool.acquire() as conn:
        assert [tuple(r) for r in await conn.fetch(plans, quoted)] == expected
        installed = await conn.fetch(f"SELECT name FROM {quoted}.convostore_functions ORDER BY name")
    assert [r["name"] for r in installed] == sorted(FUNCTIONS)
    session = await store.create_session("u", "a")
    await store.add_messages(session.id, [{"role": "user", "content": f"q{i}"} for i in range(30)])
    assert [m.content for m in await store.get_messages(session.id, window=Window(turns=2))] == ["q28", "q29"]
    assert len(await store.get_messages(session.id, window=Window(tokens=2))) == 2  # a token each


def test_no_migration_creates_a_function() -> None:
    # The function registry installs functions; a migration's text never changes once
    # released, so none may carry a function's live text.
    for migration in MIGRATIONS:
        sql = "\n".join(line for line in migration.sql.upper().splitlines() if not line.lstrip().startswith("--"))
        assert "CREATE OR REPLACE FUNCTION" not in sql, migration.name
        assert "CREATE FUNCTION" not in sql, migration.name


def test_migrations_split_into_whole_statements() -> None:
    for migration in MIGRATIONS:
        statements = migration.statements('"s"')
        assert all(s.rstrip().endswith(";") or s == statements[-1] for s in statements)
        assert sum(s.count("$fn$") for s in statements) % 2 == 0
        for statement in statements:
            assert statement.count("$fn$") % 2 == 0, statement
            assert statement.count("$$") % 2 == 0, statement


async def test_status_reports_pending_before_migrating(database_url: str, schema_name: str) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name, apply_migrations=None) as s:
        assert all(x.applied_at is None for x in await s.migration_status())
        applied = await s.migrate()
        assert [m.version for m in applied] == [m.version for m in MIGRATIONS]


async def test_a_schema_newer_than_the_library_is_refused(database_url: str, schema_name: str) -> None:
    async with PostgresSessionStore(database_url, schema=schema_name):
        pass
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f'INSERT INTO "{schema_name}".convostore_migrations (version, name) VALUES (999, $1)', "future"
        )
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="upgrade convostore"):
        async with PostgresSessionStore(database_url, schema=schema_name):
            pass


_MIGRATE_IN_CHILD = """
import asyncio, sys
from convostore import PostgresSessionStore

async def main() -> None:
    async with PostgresSessionStore(sys.argv[1], schema=sys.argv[2]) as store:
        s = await store.create_session("u", "a")
        await store.add_message(s.id, "user", "hi")

asyncio.run(main())
"""


async def _count_migrations_and_sessions(database_url: str, schema_name: str) -> tuple[list[int], int]:
    conn = await asyncpg.connect(database_url)
    try:
        versions = await conn.fetch(f'SELECT version FROM "{schema_name}".convostore_migrations ORDER BY 1')
        sessions = await conn.fetchval(f'SELECT count(*) FROM "{schema_name}".agent_sessions')
    finally:
        await conn.close()
    return [r["version"] for r in versions], sessions


@pytest.mark.slow
def test_four_processes_migrating_at_once(database_url: str, schema_name: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_IN_CHILD, database_url, schema_name],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    versions, sessions = asyncio.run(_count_migrations_and_sessions(database_url, schema_name))
    assert versions == [m.version for m in MIGRATIONS]
    assert sessions == 4
