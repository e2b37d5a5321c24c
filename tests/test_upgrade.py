"""Upgrading: a schema that an earlier release migrated ends up as a schema migrated afresh."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from convostore import PostgresSessionStore
from convostore._sql import FUNCTIONS
from convostore.migrations import MIGRATIONS, apply_migrations

# A schema at migration 13 as the release before the function registry left it (see
# fixtures/README.md), dumped from PostgreSQL 15 under the name below.
FIXTURE = Path(__file__).parent / "fixtures" / "schema_13.sql"
FIXTURE_SCHEMA = "convostore_fixture"

# What a schema is made of, each row with the schema's name left out (the two differ).
_CATALOG = {
    "tables": """
        SELECT c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
         WHERE c.relnamespace = to_regnamespace($1) AND c.relkind NOT IN ('i', 'I') ORDER BY 1""",
    # In each table's order, without its attnum: a column dropped leaves a gap a dump does not.
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated,
               pg_get_expr(d.adbin, d.adrelid)
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = to_regnamespace($1) AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY c.relname, a.attnum""",
    "constraints": """
        SELECT r.relname, k.conname, k.contype, k.convalidated, pg_get_constraintdef(k.oid)
          FROM pg_constraint k JOIN pg_class r ON r.oid = k.conrelid
         WHERE k.connamespace = to_regnamespace($1) ORDER BY 1, 2""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY 1, 2",
    "policies": """
        SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check FROM pg_policies
         WHERE schemaname = $1 ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid) FROM pg_proc p
         WHERE p.pronamespace = to_regnamespace($1) ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = to_regnamespace($1) AND NOT t.tgisinternal ORDER BY 1, 2""",
    "ledger": "SELECT version, name FROM {schema}.convostore_migrations ORDER BY 1",
    "registry": "SELECT name FROM {schema}.convostore_functions ORDER BY 1",
}


def as_restored(definition: str) -> str:
    """*definition* as PostgreSQL prints it once a dump restored it: ``role IN ('a', 'b')`` on a
    varchar column is kept as ``role::text = ANY ((ARRAY['a'::varchar, ...])::text[])`` but
    read back from its printed form as ``ANY (ARRAY[('a'::varchar)::text, ...])``, which is
    the same condition (the only difference a dump makes to convostore's schema)."""
    definition = re.sub(r"\('((?:[^']|'')*)'::character varying\)::text", r"'\1'::character varying", definition)
    return re.sub(r"ANY \(\((ARRAY\[[^\]]*\])\)::text\[\]\)", r"ANY (\1)", definition)


async def catalog(conn: asyncpg.Connection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """The catalog of *schema*, each kind of object as sorted rows."""

    def anonymous(value: Any) -> Any:
        return as_restored(re.sub(rf"\b{schema}\b", "SCHEMA", value)) if isinstance(value, str) else value

    quoted = f'"{schema}"'
    found: dict[str, list[tuple[Any, ...]]] = {}
    for kind, query in _CATALOG.items():
        query = query.replace("{schema}", quoted)
        rows = await conn.fetch(query, schema) if "$1" in query else await conn.fetch(query)
        found[kind] = [tuple(anonymous(v) for v in r) for r in rows]
    return found


def restorable(dump: str, schema: str) -> str:
    """The dump as statements that any server from PostgreSQL 15 on runs, under *schema*:
    without psql's meta-commands and the session settings of the pg_dump that made it."""
    kept = [line for line in dump.splitlines() if not line.startswith(("\\", "SET ", "SELECT pg_catalog.set_config("))]
    return re.sub(rf"\b{FIXTURE_SCHEMA}\b", schema, "\n".join(kept))


async def test_a_schema_of_the_previous_release_migrates_to_what_a_fresh_one_is(
    database_url: str, schema_name: str
) -> None:
    fresh = f"t_{uuid.uuid4().hex[:16]}"
    # In UTC, as the fixture was made: migration 3 bounds expires_at by '9999-01-01', which a
    # server reads in the session's time zone.
    conn = await asyncpg.connect(database_url, server_settings={"timezone": "UTC"})
    try:
        async with conn.transaction():
            await conn.execute(restorable(FIXTURE.read_text(encoding="utf-8"), schema_name))
        upgraded = await apply_migrations(conn, schema_name)
        assert [m.name for m in upgraded] == [m.name for m in MIGRATIONS if m.version > 13]
        assert [m.version for m in await apply_migrations(conn, fresh)] == [m.version for m in MIGRATIONS]
        old, new = await catalog(conn, schema_name), await catalog(conn, fresh)
        assert [r[0] for r in new["registry"]] == sorted(FUNCTIONS)
        assert {name for name, *_ in new["functions"]} == set(FUNCTIONS)
        for kind in _CATALOG:
            assert old[kind] == new[kind], kind
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE')
        await conn.close()
    # And the upgraded schema serves as it did.
    async with PostgresSessionStore(database_url, schema=schema_name) as store:
        session = await store.create_session("u", "a")
        await store.add_messages(
            session.id, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        )
        assert [m.content for m in await store.get_messages(session.id)] == ["hi", "yo"]
