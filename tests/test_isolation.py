"""Nobody reads a conversation that is not theirs: tenants, user views, row-level security.

Tenant B's data is seeded by a superuser; then every public method of the store (and the
functions that take one), the CLI, the Agents SDK session and raw SQL are tried from tenant
A, under the runtime role that row-level security restricts, and B must come out exactly as
it was, with nothing of it returned. A method added later without a scope fails the walk,
because the walk refuses methods it has no call for.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from typer.testing import CliRunner

import convostore
from convostore import ConvostoreError, NewMessage, PostgresSessionStore, TurnUsage
from convostore.cli import app
from convostore.keys import create_key
from convostore.openai_agents import PostgresSession
from convostore.roles import create_roles

from .conftest import DISTRIBUTED

KEY = base64.b64encode(b"k" * 32).decode()


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def _set_up_roles(
    database_url: str, schema_name: str, tenant: str | None = None, user: str | None = None
) -> Iterator[tuple[str, str]]:
    """The schema migrated, tenant A and B seeded, and (owner URL, runtime URL), the runtime
    role bound to *tenant* (and *user*) if given."""
    if tenant is not None and DISTRIBUTED:
        pytest.skip("tenant-bound roles are refused on distributed tables (see the test that says so)")
    suffix = uuid.uuid4().hex[:8]
    owner, runtime = f"cs_owner_{suffix}", f"cs_app_{suffix}"

    async def setup() -> None:
        async with PostgresSessionStore(database_url, schema=schema_name) as admin:
            await create_roles(admin, owner=owner, runtime=runtime, tenant=tenant, user=user)
            await _seed(admin)

    async def teardown() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE')
            for role in (runtime, owner):
                await conn.execute(f'DROP OWNED BY "{role}"')
                await conn.execute(f'DROP ROLE "{role}"')
        finally:
            await conn.close()

    asyncio.run(setup())
    try:
        yield _as_user(database_url, owner), _as_user(database_url, runtime)
    finally:
        asyncio.run(teardown())


@pytest.fixture
def roles(database_url: str, schema_name: str) -> Iterator[tuple[str, str]]:
    """The schema migrated, tenant A and B seeded, and (owner URL, runtime URL)."""
    yield from _set_up_roles(database_url, schema_name)


@pytest.fixture(params=[None, "alice"], ids=["tenant", "tenant-and-user"])
def bound(request: pytest.FixtureRequest, database_url: str, schema_name: str) -> Iterator[tuple[str, str | None]]:
    """As :func:`roles`, the runtime role bound to tenant A (and to its user alice): (runtime
    URL, the user it is bound to)."""
    user: str | None = request.param
    for _, runtime_url in _set_up_roles(database_url, schema_name, tenant="A", user=user):
        yield runtime_url, user


B_SESSIONS = ("b-shared", "b-own")


async def _seed(admin: PostgresSessionStore) -> None:
    """Tenant B: bob's sessions (one with the id tenant A also uses); tenant A: alice's."""
    b = admin.scoped(tenant="B")
    for sid in B_SESSIONS:
        await b.create_session("bob", "agent", {"secret": "b-metadata"}, session_id=sid, expires_in=0.001)
        await b.add_messages(sid, [NewMessage("user", "b-secret-1"), NewMessage("assistant", "b-secret-2")])
    await b.fork_session("b-own", "b-branch")
    await b.add_messages("b-own", [NewMessage("user", "b-secret-3")], branch="b-branch")
    await b.record_usage("b-own", TurnUsage(input_tokens=777777, model="b-secret-model"))
    await b.update_state("agent", {"shared": "b-secret-state"})
    await b.update_state("agent", {"mine": "b-secret-user-state"}, user_id="bob")
    await b.pool.execute(f"UPDATE \"{admin.schema}\".agent_sessions SET updated_at = now() - interval '400 days'")
    a = admin.scoped(tenant="A")
    await a.create_session("alice", "agent", session_id="b-shared")
    await a.add_message("b-shared", "user", "alice's own")


async def _snapshot(url: str, schema: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            f"""SELECT s.id, s.user_id, s.agent_name, s.metadata, s.updated_at, s.expires_at, s.last_seq,
                       m.seq, m.id, m.content, m.branch
                FROM "{schema}".agent_sessions s
                LEFT JOIN "{schema}".conversation_messages m ON m.tenant_id = s.tenant_id AND m.session_id = s.id
                WHERE s.tenant_id = 'B' ORDER BY 1, 8"""
        )
        branches = await conn.fetch(
            f"""SELECT session_id, name, parent, fork_seq, deleted_at, cleared_to
                FROM "{schema}".conversation_branches WHERE tenant_id = 'B' ORDER BY 1, 2"""
        )
        usage = await conn.fetch(
            f"""SELECT session_id, id, input_tokens, model FROM "{schema}".conversation_usage
                WHERE tenant_id = 'B' ORDER BY 1, 2"""
        )
        state = await conn.fetch(
            f"""SELECT agent_name, user_id, state::text, updated_at FROM "{schema}".convostore_state
                WHERE tenant_id = 'B' ORDER BY 1, 2"""
        )
        return [tuple(r) for r in (*rows, *branches, *usage, *state)]
    finally:
        await conn.close()


def _leaks(value: Any) -> bool:
    """Whether *value* shows anything of tenant B (tenant A has its own sessions, even its own
    bob and its own "b-own": only B's contents mark B)."""
    text = repr(value)
    return "b-secret" in text or "b-metadata" in text or "777777" in text or "b-branch" in text


# Every public method, and how tenant A tries to reach tenant B through it.
Call = Callable[[PostgresSessionStore], Awaitable[Any]]


async def _export(store: PostgresSessionStore) -> list[str]:
    return [line async for line in convostore.export_jsonl(store)]


async def _import(store: PostgresSessionStore) -> Any:
    lines = [
        json.dumps({"type": "session", "tenant_id": "B", "id": "b-own", "user_id": "bob", "agent_name": "agent",
                    "metadata": {}, "created_at": "2026-01-01T00:00:00+00:00",
                    "updated_at": "2026-01-01T00:00:00+00:00", "last_seq": 9}),
        json.dumps({"type": "message", "session_id": "b-own", "id": "injected", "seq": 9, "role": "user",
                    "content": "into B?", "created_at": "2026-01-01T00:00:00+00:00"}),
    ]  # fmt: skip
    return await convostore.import_jsonl(store, lines, on_conflict="skip", allow_partial=True)


WALK: dict[str, Call] = {
    "create_session": lambda s: s.create_session(s.user or "bob", "agent", session_id="b-own"),
    "get_session": lambda s: s.get_session("b-own"),
    "update_metadata": lambda s: s.update_metadata("b-own", {"secret": "overwritten"}),
    "set_expiry": lambda s: s.set_expiry("b-own", ttl=60),
    "delete_session": lambda s: s.delete_session("b-own"),
    "get_user_sessions": lambda s: s.get_user_sessions(s.user or "bob"),
    "add_message": lambda s: s.add_message("b-own", "user", "appended from A"),
    "add_messages": lambda s: s.add_messages("b-own", [NewMessage("user", "x")], user_id=s.user or "bob"),
    "get_messages": lambda s: s.get_messages("b-own"),
    "pop_message": lambda s: s.pop_message("b-own"),
    "clear_session": lambda s: s.clear_session("b-own"),
    "idle_cutoff": lambda s: s.idle_cutoff(timedelta(days=1)),
    "delete_idle_sessions": lambda s: s.delete_idle_sessions(timedelta(days=1)),
    "count_idle_sessions": lambda s: s.count_idle_sessions(timedelta(days=1)),
    "delete_expired_sessions": lambda s: s.delete_expired_sessions(),
    "delete_user": lambda s: s.delete_user(s.user or "bob"),
    "stats": lambda s: s.stats(),
    "audit": lambda s: s.audit("probe", rows=0),
    "migrate": lambda s: s.migrate(),
    "migration_status": lambda s: s.migration_status(),
    "export_jsonl": _export,
    "import_jsonl": _import,
    "cleanup_old_sessions": lambda s: convostore.cleanup_old_sessions(s, days_old=1),
    "rekey": lambda s: s.rekey(include_plaintext=True),
    "fork_session": lambda s: s.fork_session("b-own", "a-fork"),
    "list_branches": lambda s: s.list_branches("b-own"),
    "delete_branch": lambda s: s.delete_branch("b-own", "b-branch"),
    "compact": lambda s: s.compact("b-own", [NewMessage("assistant", "a summary")]),
    "record_usage": lambda s: s.record_usage("b-own", TurnUsage(input_tokens=1)),
    "usage": lambda s: s.usage(by="session"),
    "search": lambda s: s.search("secret"),
    "list_sessions": lambda s: s.list_sessions(metadata={"secret": "b-metadata"}),
    "get_state": lambda s: s.get_state("agent", user_id=s.user or "bob"),
    "update_state": lambda s: s.update_state("agent", {"shared": "overwritten"}),
}
# Methods that touch no conversation data (lifecycle, views, helpers).
NO_DATA = {
    "connect",
    "close",
    "scoped",
    "acting_user",
    "scope",
    "start_sweeper",
    "stop_sweeper",
    "distribute",
    "search_index",  # the index is the schema's: it holds no tenant's rows apart
    "create_search_index",
    "drop_search_index",
}
# Operators' calls across tenants: a role under row-level security is refused them outright.
ACROSS_TENANTS: dict[str, Call] = {
    "delete_idle_sessions": lambda s: s.delete_idle_sessions(timedelta(days=1), all_tenants=True),
    "count_idle_sessions": lambda s: s.count_idle_sessions(timedelta(days=1), all_tenants=True),
    "delete_expired_sessions": lambda s: s.delete_expired_sessions(all_tenants=True),
    "stats": lambda s: s.stats(all_tenants=True),
    "export_jsonl": lambda s: _consume(convostore.export_jsonl(s, all_tenants=True)),
    "usage": lambda s: s.usage(by="user", all_tenants=True),
    "search": lambda s: s.search("secret", all_tenants=True),
}


async def _consume(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]


def test_the_walk_covers_every_public_method() -> None:
    public = {
        name
        for name, member in inspect.getmembers(PostgresSessionStore)
        if not name.startswith("_") and callable(member) and not isinstance(member, property)
    }
    functions = {"export_jsonl", "import_jsonl", "cleanup_old_sessions"}
    assert public | functions == set(WALK) | NO_DATA, (
        "a public method without a scope walk: add it to WALK (or NO_DATA if it touches no data)"
    )


@pytest.mark.parametrize("role", ["runtime", "owner"])
@pytest.mark.parametrize("user", [None, "alice"])
async def test_tenant_a_reaches_nothing_of_tenant_b(
    roles: tuple[str, str], database_url: str, schema_name: str, role: str, user: str | None
) -> None:
    owner_url, runtime_url = roles
    before = await _snapshot(database_url, schema_name)
    assert len(before) == 5 + 1 + 1 + 2  # B's messages, its branch, its usage, its state
    # With encryption keys, so that rekey (sealing plaintext rows) is walked too.
    url = runtime_url if role == "runtime" else owner_url
    store = PostgresSessionStore(url, schema=schema_name, tenant="A", encryption_keys=[KEY])
    view = store.scoped(user=user) if user else store
    try:
        # Not a vacuous walk: tenant A's own conversation is there for it.
        assert [m.content for m in await view.get_messages("b-shared")] == ["alice's own"]
        for name, call in WALK.items():
            try:
                result = await call(view)
            except ConvostoreError:
                continue  # refused is fine; what matters is B below
            assert not _leaks(result), f"{name} returned tenant B's data: {result!r}"
        for call in ACROSS_TENANTS.values():
            if role == "runtime" or user:
                with pytest.raises(ConvostoreError):
                    await call(view)
    finally:
        await store.close()
    assert await _snapshot(database_url, schema_name) == before


async def test_raw_sql_under_the_runtime_role_sees_only_its_scope(roles: tuple[str, str], schema_name: str) -> None:
    _, runtime_url = roles
    conn = await asyncpg.connect(runtime_url)
    s = f'"{schema_name}"'
    # On Citus a SET LOCAL reaches the worker nodes only when asked to.
    citus = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
    propagate = "SET LOCAL citus.propagate_set_commands = 'local'; " if citus else ""
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.agent_sessions") == 0
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.conversation_messages") == 0
        async with conn.transaction():
            await conn.execute(propagate + "SET LOCAL convostore.tenant_id = 'A'; SET LOCAL convostore.user_id = '*'")
            assert await conn.fetchval(f"SELECT count(*) FROM {s}.agent_sessions") == 1
            assert await conn.fetchval(f"UPDATE {s}.agent_sessions SET metadata = '{{}}' WHERE tenant_id = 'B'") is None
            assert (await conn.execute(f"DELETE FROM {s}.conversation_messages WHERE tenant_id = 'B'")) == "DELETE 0"
        async with conn.transaction():
            await conn.execute(
                propagate + "SET LOCAL convostore.tenant_id = 'A'; SET LOCAL convostore.user_id = 'alice'"
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # WITH CHECK: no row into another scope
                await conn.execute(
                    f"INSERT INTO {s}.agent_sessions (tenant_id, id, user_id, agent_name) VALUES ('B', 'x', 'bob', 'a')"
                )
        for statement in (
            f"SELECT * FROM {s}.convostore_audit",
            f"DELETE FROM {s}.convostore_audit",
            f"UPDATE {s}.convostore_audit SET rows = 0",
            f"TRUNCATE {s}.convostore_audit",
            f"DROP TABLE {s}.agent_sessions",
            f"ALTER TABLE {s}.agent_sessions DISABLE ROW LEVEL SECURITY",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()


def test_the_cli_in_tenant_a_reaches_nothing_of_tenant_b(
    roles: tuple[str, str], database_url: str, schema_name: str
) -> None:
    _, runtime_url = roles
    before = asyncio.run(_snapshot(database_url, schema_name))
    env = {"DATABASE_URL": runtime_url, "CONVOSTORE_SCHEMA": schema_name, "CONVOSTORE_TENANT": "A"}
    runner = CliRunner()
    for args in (
        ["sessions", "list", "--user", "bob", "--json"],
        ["sessions", "show", "b-own"],
        ["export"],
        ["delete-user", "bob", "--yes"],
        ["cleanup", "--older-than", "1d"],
        ["sweep"],
        ["stats", "--json"],
    ):
        result = runner.invoke(app, args, env=env)
        assert not _leaks(result.output), (args, result.output)
    refused = runner.invoke(app, ["cleanup", "--older-than", "1d", "--all-tenants"], env=env)
    assert refused.exit_code == 1
    assert asyncio.run(_snapshot(database_url, schema_name)) == before


async def test_the_sdk_session_in_tenant_a_reaches_nothing_of_tenant_b(
    roles: tuple[str, str], database_url: str, schema_name: str
) -> None:
    _, runtime_url = roles
    before = await _snapshot(database_url, schema_name)
    store = PostgresSessionStore(runtime_url, schema=schema_name, tenant="A")
    try:
        session = PostgresSession("b-own", store=store, user_id="bob")
        assert await session.get_items() == []
        assert await session.pop_item() is None
        await session.clear_session()
        await session.add_items([{"role": "user", "content": "a's own b-own"}])
        assert [i["content"] for i in await session.get_items()] == ["a's own b-own"]  # type: ignore[typeddict-item]
    finally:
        await store.close()
    assert await _snapshot(database_url, schema_name) == before


async def test_deletions_exports_and_imports_are_audited(
    roles: tuple[str, str], database_url: str, schema_name: str
) -> None:
    owner_url, runtime_url = roles
    store = PostgresSessionStore(runtime_url, schema=schema_name, tenant="A", actor="support:eve")
    try:
        await store.create_session("carol", "agent", session_id="c1")
        await store.add_message("c1", "user", "hello")
        await store.clear_session("c1")
        await store.delete_session("c1")
        await _consume(convostore.export_jsonl(store, user_id="alice"))
        await store.delete_user("alice")
    finally:
        await store.close()
    conn = await asyncpg.connect(owner_url)
    try:
        rows = await conn.fetch(
            "SELECT db_role, actor, action, tenant_id, user_id, session_id, rows "
            f"FROM \"{schema_name}\".convostore_audit WHERE actor = 'support:eve' ORDER BY at"
        )
    finally:
        await conn.close()
    runtime = urlsplit(runtime_url).username
    assert [(r["action"], r["tenant_id"], r["rows"]) for r in rows] == [
        ("clear_session", "A", 1),
        ("delete_session", "A", 1),
        ("export", "A", 1),
        ("delete_user", "A", 1),
    ]
    assert {r["db_role"] for r in rows} == {runtime}


INJECTION = [
    "'",
    "''; DROP TABLE agent_sessions; --",
    "x' OR '1'='1",
    "/* comment */ --",
    "%",
    "%s%n%%",
    "$1",
    "\\",
    "\\'; SELECT 1; --",
    "*",
    "default",
    "\uff21\uff2c\uff29\uff23\uff25",  # fullwidth ALICE
    "\u0430lice",  # Cyrillic a
    "alice\u200b",  # zero-width space
    "nul\x00byte",
    "🎉",
]


@pytest.mark.parametrize("text", INJECTION)
async def test_hostile_strings_in_every_field_change_nothing_else(
    roles: tuple[str, str], database_url: str, schema_name: str, text: str
) -> None:
    """Each string in every field (tenant, user, agent, session and message ids, content,
    metadata, tool-call ids) either round-trips into its own rows or is refused; no other row
    changes."""
    _, runtime_url = roles
    before = await _snapshot(database_url, schema_name)
    store = PostgresSessionStore(runtime_url, schema=schema_name, tenant="A")
    try:
        try:
            view = store.scoped(tenant=text, user=text)
            session = await view.create_session(text, text, {text: text, "k": text}, session_id=text)
            stored = await view.add_messages(
                text,
                [
                    NewMessage("user", text, id=text),
                    NewMessage("assistant", text, tool_calls=[{"id": text, "type": "function", text: text}]),
                    NewMessage("tool", text, tool_call_id=text),
                ],
            )
        except ConvostoreError:
            assert "\x00" in text or text == "*", f"{text!r} was refused"
        else:
            assert session.metadata == {text: text, "k": text}
            again = await view.get_session(text)
            assert again is not None
            assert [m.content for m in again.messages] == [text] * 3
            assert again.messages == tuple(stored)
            assert (await view.get_user_sessions())[0].id == text
        assert [m.content for m in await store.get_messages("b-shared")] == ["alice's own"]
    finally:
        await store.close()
    assert await _snapshot(database_url, schema_name) == before


async def test_a_run_for_another_user_cannot_use_a_users_session(store: PostgresSessionStore) -> None:
    from agents import Agent, Runner

    from convostore import SessionOwnershipError
    from convostore.openai_agents import OfflineModel

    agent = Agent(name="A", model=OfflineModel())
    session = PostgresSession("alices", store=store.scoped(user="alice"))
    assert session.user_id == "alice"
    await Runner.run(agent, "My name is Alice", session=session, context={"user_id": "alice"})
    with pytest.raises(SessionOwnershipError):
        await Runner.run(agent, "What's my name?", session=session, context={"user_id": "mallory"})
    with pytest.raises(SessionOwnershipError):
        await Runner.run(agent, "hi", session=session, context={"tenant_id": "other"})
    assert len(await session.get_items()) == 2


@pytest.mark.parametrize("schema", ["convo\n", "public\n", "a\nb", "convo "])
def test_a_schema_name_with_a_newline_or_space_is_refused(schema: str) -> None:
    # `$` would match before a final newline: the name must end where the string ends.
    from convostore import ConfigurationError

    with pytest.raises(ConfigurationError):
        PostgresSessionStore("postgresql://nowhere/none", schema=schema)


async def _audit_rows(url: str, schema: str, action: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(
            await conn.fetch(f'SELECT db_role, actor FROM "{schema}".convostore_audit WHERE action = $1', action)
        )
    finally:
        await conn.close()


async def _the_runtime_role_cannot_forge_the_audit_trail(runtime_url: str, database_url: str, schema: str) -> None:
    """As the application's role, with arbitrary SQL: an audit row cannot name its writer or time."""
    runtime = urlsplit(runtime_url).username
    audit = f'"{schema}".convostore_audit'
    conn = await asyncpg.connect(runtime_url)
    try:
        for statement in (
            f"INSERT INTO {audit} (db_role, action) VALUES ('postgres', 'forged')",
            f"INSERT INTO {audit} (db_role, action) VALUES (DEFAULT, 'forged')",
            f"INSERT INTO {audit} (at, action) VALUES ('2000-01-01', 'forged')",
            f"INSERT INTO {audit} SELECT now(), 'postgres', 'x', 'forged'",
            f"UPDATE {audit} SET db_role = 'postgres'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        # What the application may say, it says: the actor is its word, the role is not.
        await conn.execute(f"INSERT INTO {audit} (action, actor) VALUES ('claimed', 'postgres')")
    finally:
        await conn.close()
    assert [tuple(r) for r in await _audit_rows(database_url, schema, "forged")] == []
    assert [tuple(r) for r in await _audit_rows(database_url, schema, "claimed")] == [(runtime, "postgres")]


async def test_the_runtime_role_cannot_choose_who_or_when_in_the_audit_trail(
    roles: tuple[str, str], database_url: str, schema_name: str
) -> None:
    _, runtime_url = roles
    await _the_runtime_role_cannot_forge_the_audit_trail(runtime_url, database_url, schema_name)


async def test_migrating_narrows_the_audit_grants_of_roles_set_up_before(
    roles: tuple[str, str], database_url: str, schema_name: str
) -> None:
    owner_url, runtime_url = roles
    runtime = urlsplit(runtime_url).username
    conn = await asyncpg.connect(database_url)
    try:  # the schema and grants as an earlier convostore left them
        s = f'"{schema_name}"'
        await conn.execute(f'REVOKE ALL ON {s}.convostore_audit FROM "{runtime}"')
        await conn.execute(f'SET ROLE "{urlsplit(owner_url).username}"')
        await conn.execute(f'GRANT INSERT ON {s}.convostore_audit TO "{runtime}"')
        await conn.execute(f"ALTER TABLE {s}.convostore_audit ALTER COLUMN db_role SET DEFAULT current_user")
        await conn.execute(f"DELETE FROM {s}.convostore_migrations WHERE version = 15")
        await conn.execute("RESET ROLE")
    finally:
        await conn.close()
    async with PostgresSessionStore(database_url, schema=schema_name) as admin:
        assert [s.version for s in await admin.migration_status() if s.applied_at is None] == []
    await _the_runtime_role_cannot_forge_the_audit_trail(runtime_url, database_url, schema_name)


async def _role_flags(url: str, name: str) -> tuple[bool, bool, bool] | None:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT rolsuper, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = $1", name)
        return None if row is None else (row["rolsuper"], row["rolcreaterole"], row["rolcanlogin"])
    finally:
        await conn.close()


async def test_create_roles_refuses_to_change_an_existing_superuser_or_role_admin(
    database_url: str, schema_name: str
) -> None:
    from convostore.errors import RoleConflict

    suffix = uuid.uuid4().hex[:8]
    superuser, admin_role, owner = f"cs_super_{suffix}", f"cs_admin_{suffix}", f"cs_owner_{suffix}"
    conn = await asyncpg.connect(database_url)
    await conn.execute(f'CREATE ROLE "{superuser}" SUPERUSER LOGIN')
    await conn.execute(f'CREATE ROLE "{admin_role}" CREATEROLE LOGIN')
    try:
        async with PostgresSessionStore(database_url, schema=schema_name) as store:
            for runtime in (superuser, admin_role):
                with pytest.raises(RoleConflict) as refused:
                    await create_roles(store, owner=owner, runtime=runtime)
                assert any("NOSUPERUSER" in c or "NOCREATEROLE" in c for c in refused.value.changes)
            with pytest.raises(RoleConflict, match="would own schema"):  # a superuser as the owner, too
                await create_roles(store, owner=superuser, runtime=owner)
            # Nothing changed, nothing created.
            assert await _role_flags(database_url, superuser) == (True, False, True)
            assert await _role_flags(database_url, admin_role) == (False, True, True)
            assert await _role_flags(database_url, owner) is None
            # Told to: changed.
            made = await create_roles(store, owner=owner, runtime=admin_role, force=True)
            assert made.created == (owner,)
            assert await _role_flags(database_url, admin_role) == (False, False, True)
            # Set up once, the same roles are set up again without force (after later migrations).
            assert (await create_roles(store, owner=owner, runtime=admin_role)).created == ()
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE')
        for role in (superuser, admin_role, owner):
            await conn.execute(
                f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN "
                f'DROP OWNED BY "{role}"; DROP ROLE "{role}"; END IF; END $$'
            )
        await conn.close()


# -- a runtime role bound to tenant A, sending any SQL it likes --------------------------------


async def _b_extras(url: str, schema: str) -> list[Any]:
    """Tenant B's API keys and audit rows, as a superuser sees them."""
    conn = await asyncpg.connect(url)
    try:
        s = f'"{schema}"'
        keys = await conn.fetch(
            f"SELECT id, name, sign_outs, revoked_at FROM {s}.convostore_api_keys WHERE tenant_id = 'B'"
        )
        audit = await conn.fetch(f"SELECT action, actor FROM {s}.convostore_audit WHERE tenant_id = 'B' ORDER BY 1, 2")
        return [tuple(r) for r in (*keys, *audit)]
    finally:
        await conn.close()


def _append_call(s: str, tenant: str, owner: str, message_id: str) -> str:
    """convostore_append called directly, naming *tenant* and one message of session b-own."""
    return (
        f"SELECT * FROM {s}.convostore_append('{tenant}', 'b-own', NULL, false, true, '{{1}}', '{{b-own}}', "
        f"'{{{owner}}}', '{{agent}}', '{{main}}', '{{{message_id}}}', '{{user}}', '{{planted}}', '{{NULL}}', "
        "'{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}')"
    )


async def test_a_bound_role_reaches_nothing_of_another_tenant_whatever_sql_it_sends(
    bound: tuple[str, str | None], database_url: str, schema_name: str
) -> None:
    """The application is compromised: it sends SQL of its own as the bound runtime role. It
    sets the scope settings to B, sets them inside a SELECT, names B in the functions, and
    writes B's rows, keys and audit trail directly: 0 rows of B come back or change."""
    runtime_url, user = bound
    async with PostgresSessionStore(database_url, schema=schema_name, tenant="B") as admin:
        await create_key(admin, name="b-key")
    before, extras = await _snapshot(database_url, schema_name), await _b_extras(database_url, schema_name)
    s = f'"{schema_name}"'
    tables = ("agent_sessions", "conversation_messages", "conversation_branches", "conversation_usage",
              "convostore_state", "convostore_api_keys")  # fmt: skip
    conn = await asyncpg.connect(runtime_url)
    try:
        citus = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
        if citus:  # a SET reaches the worker nodes only when asked to
            await conn.execute("SET citus.propagate_set_commands = 'local'")
        # Not vacuous: the role does reach its own tenant's rows, through the same settings.
        async with conn.transaction():
            await conn.execute("SET LOCAL convostore.tenant_id = 'A'; SET LOCAL convostore.user_id = '*'")
            assert await conn.fetchval(f"SELECT count(*) FROM {s}.conversation_messages") == 1
        mine = user or "alice"
        stored = await conn.fetch(_append_call(s, "A", mine, "a-planted"))
        assert [r["id"] for r in stored] == ["a-planted"]

        for setting in ("SET", "SET LOCAL"):
            async with conn.transaction():
                await conn.execute(f"{setting} convostore.tenant_id = 'B'; {setting} convostore.user_id = '*'")
                for table in tables:
                    assert await conn.fetch(f"SELECT * FROM {s}.{table} WHERE tenant_id = 'B'") == [], table
                    if table != "convostore_api_keys":  # which it may not delete from at all
                        assert await conn.execute(f"DELETE FROM {s}.{table} WHERE tenant_id = 'B'") == "DELETE 0"
                assert await conn.execute(f"UPDATE {s}.agent_sessions SET metadata = '{{}}'") == "UPDATE 0"
                assert await conn.execute(f"UPDATE {s}.convostore_api_keys SET sign_outs = 99") == "UPDATE 0"
        # The settings made inside the statement that reads.
        rows = await conn.fetch(
            f"SELECT m.* FROM set_config('convostore.tenant_id', 'B', false) t, "
            f"set_config('convostore.user_id', '*', false) u, {s}.conversation_messages m"
        )
        assert rows == []
        # The functions, naming B: they act as the role, so they find and write nothing of B.
        read = await conn.fetch(
            f"SELECT * FROM {s}.convostore_read('B', 'b-own', NULL, NULL, 100, 'main', true, NULL, NULL, false, NULL)"
        )
        assert [r for r in read if r["id"] is not None] == []
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # creating b-own's row in B is refused
            await conn.fetch(_append_call(s, "B", "bob", "planted"))
        # Writing B's rows, keys and audit trail straight, or widening the role: refused.
        policy = await conn.fetchval(
            "SELECT polname FROM pg_policy WHERE polrelid = $1::regclass AND polname LIKE 'convostore_bound_%'",
            f"{s}.conversation_messages",
        )
        assert policy is not None
        for statement in (
            f"INSERT INTO {s}.agent_sessions (tenant_id, id, user_id, agent_name) VALUES ('B', 'x', 'bob', 'a')",
            f"INSERT INTO {s}.convostore_state (tenant_id, agent_name, user_id, state) VALUES ('B', 'a', '', '{{}}')",
            f"INSERT INTO {s}.convostore_audit (action, tenant_id) VALUES ('forged', 'B')",
            f"INSERT INTO {s}.convostore_bound_roles (role_name, tenant_id) VALUES (current_user, 'B')",
            f"UPDATE {s}.convostore_bound_roles SET tenant_id = 'B'",
            f"DELETE FROM {s}.convostore_bound_roles",
            f"ALTER TABLE {s}.conversation_messages NO FORCE ROW LEVEL SECURITY",
            f"DROP POLICY {policy} ON {s}.conversation_messages",
            "SET ROLE postgres",
        ):
            with pytest.raises(asyncpg.PostgresError) as refused:
                await conn.execute(statement)
            assert isinstance(refused.value, asyncpg.InsufficientPrivilegeError | asyncpg.UndefinedObjectError), (
                statement,
                refused.value,
            )
        # It reads its own binding, nobody else's.
        bindings = await conn.fetch(f"SELECT tenant_id, user_id FROM {s}.convostore_bound_roles")
        assert [tuple(r) for r in bindings] == [("A", user)]
    finally:
        await conn.close()
    assert await _snapshot(database_url, schema_name) == before
    assert await _b_extras(database_url, schema_name) == extras


@pytest.mark.parametrize("how", ["the role's own tenant", "scoped to tenant B"])
async def test_a_store_on_a_bound_role_reaches_nothing_of_another_tenant(
    bound: tuple[str, str | None], database_url: str, schema_name: str, how: str
) -> None:
    """Every public method, from a store in tenant B (refused before anything is sent, once
    the store knows the binding) and from one in A reaching for B, on the bound role."""
    runtime_url, user = bound
    before = await _snapshot(database_url, schema_name)
    store = PostgresSessionStore(runtime_url, schema=schema_name, tenant="A", encryption_keys=[KEY])
    await store.connect()
    view = store.scoped(tenant="B") if how == "scoped to tenant B" else store.scoped(user=user) if user else store
    try:
        for name, call in WALK.items():
            if name in ("migrate", "migration_status"):
                continue  # the schema's, not a tenant's
            if how == "scoped to tenant B":
                with pytest.raises(convostore.AccessDenied):
                    await call(view)
                continue
            try:
                result = await call(view)
            except ConvostoreError:
                continue  # refused is fine; what matters is B below
            assert not _leaks(result), f"{name} returned tenant B's data: {result!r}"
    finally:
        await store.close()
    assert await _snapshot(database_url, schema_name) == before


@pytest.fixture
def bound_to_alice(database_url: str, schema_name: str) -> Iterator[str]:
    """As :func:`bound`, bound to tenant A's user alice: the runtime URL."""
    for _, runtime_url in _set_up_roles(database_url, schema_name, tenant="A", user="alice"):
        yield runtime_url


async def test_a_role_bound_to_a_user_sees_and_acts_for_that_user_only(
    bound_to_alice: str, database_url: str, schema_name: str
) -> None:
    runtime_url = bound_to_alice
    async with PostgresSessionStore(database_url, schema=schema_name, tenant="A") as admin:
        await admin.create_session("carol", "agent", session_id="carol-own")
        await admin.add_message("carol-own", "user", "carol's secret")
    async with PostgresSessionStore(runtime_url, schema=schema_name, tenant="A") as store:
        assert [m.content for m in await store.get_messages("b-shared")] == ["alice's own"]
        assert [s.id for s in await store.list_sessions()] == ["b-shared"]
        assert await store.get_messages("carol-own") == []
        with pytest.raises(convostore.AccessDenied, match="user 'alice'"):
            await store.scoped(user="carol").get_messages("carol-own")
        with pytest.raises(convostore.AccessDenied, match="user 'alice'"):
            await store.add_messages("carol-2", [NewMessage("user", "hello")], user_id="carol")
    async with PostgresSessionStore(database_url, schema=schema_name, tenant="A") as admin:
        assert [m.content for m in await admin.get_messages("carol-own")] == ["carol's secret"]
        assert await admin.get_session("carol-2") is None


async def test_binding_a_role_is_refused_on_distributed_tables_and_distributing_with_bound_roles(
    database_url: str, schema_name: str
) -> None:
    """Citus copies a restrictive policy to the shards as a permissive one, which would widen a
    bound role: on distributed tables binding is refused, and a schema with bound roles is not
    distributed."""
    suffix = uuid.uuid4().hex[:8]
    owner, runtime = f"cs_owner_{suffix}", f"cs_app_{suffix}"
    try:
        async with PostgresSessionStore(database_url, schema=schema_name) as admin:
            if DISTRIBUTED:
                with pytest.raises(convostore.ConfigurationError, match="permissive"):
                    await create_roles(admin, owner=owner, runtime=runtime, tenant="A")
                assert await _policies_of(database_url, schema_name, runtime) == []
            else:
                await create_roles(admin, owner=owner, runtime=runtime, tenant="A")
                with pytest.raises(convostore.MigrationError, match="tenant-bound roles"):
                    await admin.distribute()
    finally:
        await _drop(database_url, schema_name, (runtime, owner))


def test_the_cli_binds_a_role_and_refuses_to_rebind_it_without_force(database_url: str, schema_name: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    owner, runtime = f"cs_owner_{suffix}", f"cs_app_{suffix}"
    env = {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}
    runner = CliRunner()
    create = ["roles", "create", "--owner", owner, "--runtime", runtime]
    try:
        assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
        made = runner.invoke(app, [*create, "--tenant", "A", "--bind", "--user", "alice"], env=env)
        assert made.exit_code == 0, made.output
        assert f"role {runtime} is bound to tenant A, user alice" in made.output
        assert runner.invoke(app, [*create, "--tenant", "A", "--bind", "--user", "alice"], env=env).exit_code == 0
        for other in ([*create, "--tenant", "B", "--bind"], create, [*create, "--tenant", "A", "--bind"]):
            refused = runner.invoke(app, other, env=env)
            assert refused.exit_code == 1, (other, refused.output)
            assert "bound to tenant 'A', user 'alice' ->" in refused.output
        assert runner.invoke(app, [*create, "--user", "alice"], env=env).exit_code == 2  # --user needs --bind
        rebound = runner.invoke(app, [*create, "--tenant", "B", "--bind", "--force"], env=env)
        assert rebound.exit_code == 0, rebound.output
        assert f"role {runtime} is bound to tenant B" in rebound.output
        policies = asyncio.run(_policies_of(database_url, schema_name, runtime))
        assert policies
        assert all("'B'" in qual and "alice" not in qual for qual in policies)
        unbound = runner.invoke(app, [*create, "--force"], env=env)
        assert unbound.exit_code == 0, unbound.output
        assert asyncio.run(_policies_of(database_url, schema_name, runtime)) == []
    finally:
        asyncio.run(_drop(database_url, schema_name, (runtime, owner)))


async def _policies_of(url: str, schema: str, role: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT coalesce(qual, '') || coalesce(with_check, '') AS q FROM pg_policies "
            "WHERE schemaname = $1 AND $2 = ANY (roles)",
            schema,
            role,
        )
        return [r["q"] for r in rows]
    finally:
        await conn.close()


async def _drop(url: str, schema: str, roles: tuple[str, ...]) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        for role in roles:
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.execute(f'DROP OWNED BY "{role}"')
                await conn.execute(f'DROP ROLE "{role}"')
    finally:
        await conn.close()
