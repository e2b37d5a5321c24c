"""The two database roles of a production deployment: an owner for migrations, a runtime
role for the application, which row-level security restricts.

``create_roles`` (the ``convostore roles create`` command) is run once, after the first
``migrate``, by a role that may create roles (a superuser or ``CREATEROLE`` admin):

* the **owner** role owns the schema, the tables and the functions; migrations run as it.
  As the tables' owner it is not restricted by row-level security: keep its credentials
  for migrations and operators.
* the **runtime** role can read and write sessions and messages, call the append and read
  functions, read the migration ledger and the API keys (hashes only), record that a key
  signed out of the browser, and insert into the audit trail, nothing more: it cannot
  create or alter anything, cannot bypass row-level security, and cannot rewrite or even
  read the audit trail. In an audit row it names only what the application knows (the
  actor, the action and its scope): ``db_role`` (the session's login role) and ``at`` are
  filled in by the database, and an insert naming them is refused.

A role that already exists is changed only when asked (``force=True``, ``--force``): made
with other attributes (a superuser named as the runtime role would lose ``SUPERUSER``), or
not yet holding this schema (the owner owning it, the runtime role using it), it is refused
with :class:`~convostore.errors.RoleConflict` before anything changes. Running the command
again for the roles it set up (after later migrations) changes nothing and needs no force.

**Binding the runtime role to one tenant** (``tenant=``, ``convostore roles create --bind``,
optionally to one user of it: ``user=``, ``--user``) makes the isolation hold against any SQL
the role sends, not only against the application's forgotten filters: the row-level security
policies every role is under compare rows with settings the transaction makes
(``convostore.tenant_id``), which any role can set, so a compromised application on an
unbound role can name another tenant. A bound role is also under restrictive policies that
name the role and hold the tenant (and user) as constants, on every table that carries a
tenant (sessions, messages, branches, usage, state, the audit trail, the API keys): whatever
it sets, calls or selects, it reads, writes and audits only its tenant's rows, and the
functions it may call act as it, so a call naming another tenant finds nothing and writes
nothing. The binding is recorded in ``convostore_bound_roles`` (the role may read its own
row, not write it); a store on a bound role refuses a call for another tenant or user with
:class:`~convostore.errors.AccessDenied` before sending it. Binding a role that exists
unbound, or bound otherwise, is a change: refused without ``force``. Not on distributed
tables: Citus copies restrictive policies to the shards as permissive ones (seen on 13.2.2),
which would widen the role instead; binding is refused there, and so is distributing a
schema with bound roles.

Neither role gets a password here: set them with ``ALTER ROLE ... PASSWORD`` (or your
secret manager), or use the server's other authentication methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _validate as check
from ._rls import literal
from ._sql import quote_ident
from ._types import Connection
from .citus._setup import is_distributed
from .errors import ConfigurationError, RoleConflict, SchemaNotReady
from .migrations import BOUND_ROLES_ON_CITUS
from .store import PostgresSessionStore

_TABLES = (
    "agent_sessions",
    "conversation_messages",
    "conversation_branches",
    "conversation_usage",
    "convostore_migrations",
    "convostore_functions",
    "convostore_audit",
    "convostore_api_keys",
    "convostore_state",
    "convostore_bound_roles",
)
# What the application may say in an audit row; who (db_role) and when (at) it may not.
_AUDIT_COLUMNS = "actor, action, tenant_id, user_id, session_id, rows, details"
_FUNCTIONS = (
    "convostore_append",
    "convostore_append_sharded",
    "convostore_hold_shards",
    "convostore_read",
    "convostore_compact",
)


# The attributes each role is given, as pg_roles columns and their ALTER ROLE keywords.
_KEYWORDS = {
    "rolcanlogin": "LOGIN",
    "rolsuper": "SUPERUSER",
    "rolcreatedb": "CREATEDB",
    "rolcreaterole": "CREATEROLE",
    "rolbypassrls": "BYPASSRLS",
}
_OWNER_ATTRIBUTES = {"rolcanlogin": True, "rolbypassrls": False}
_RUNTIME_ATTRIBUTES = {
    "rolcanlogin": True,
    "rolsuper": False,
    "rolcreatedb": False,
    "rolcreaterole": False,
    "rolbypassrls": False,
}

# The roles that exist among $1, their attributes, and whether they hold schema $2 already.
_EXISTING = """
SELECT r.rolname, r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolbypassrls,
       n.nspowner = r.oid AS owns_schema, has_schema_privilege(r.oid, n.oid, 'USAGE') AS uses_schema
FROM pg_roles r, pg_namespace n
WHERE r.rolname = ANY ($1::text[]) AND n.nspname = $2
"""


# The tables a bound role is narrowed on, and the condition on the user each of its commands
# must meet when the role is bound to one user ({u}: that user). The state a user-bound role
# reads includes the agent's tenant-wide state (user_id ''), which it may not change; audit
# rows and API keys are narrowed by tenant only (a user's application still verifies the
# tenant's keys and audits in the tenant).
_BOUND_TABLES: dict[str, dict[str, str | None]] = {
    "agent_sessions": {"ALL": "user_id = {u}"},
    "conversation_messages": {"ALL": "user_id = {u}"},
    "conversation_branches": {"ALL": "user_id = {u}"},
    "conversation_usage": {"ALL": "user_id = {u}"},
    "convostore_state": {
        "SELECT": "user_id IN ({u}, '')",
        "INSERT": "user_id = {u}",
        "UPDATE": "user_id = {u}",
        "DELETE": "user_id = {u}",
    },
    "convostore_audit": {"ALL": None},
    "convostore_api_keys": {"ALL": None},
}

# The bound policies of role $1 (by oid) on the tables of schema $2.
_BOUND_POLICIES = """
SELECT c.relname, p.polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $2)
  AND p.polname LIKE 'convostore_bound_' || $1::oid::text || '%'
"""


def _bound_policies(schema: str, runtime: str, oid: int, tenant: str, user: str | None) -> list[str]:
    """The statements that bind role *runtime* (whose oid is *oid*) to *tenant* (and *user*)."""
    statements = []
    for table, commands in _BOUND_TABLES.items():
        for command, user_check in commands.items():
            condition = f"tenant_id = {literal(tenant)}"
            if user is not None and user_check is not None:
                condition += " AND " + user_check.format(u=literal(user))
            name = f"convostore_bound_{oid}" + ("" if command == "ALL" else "_" + command.lower())
            using = "" if command == "INSERT" else f" USING ({condition})"
            check = "" if command in ("SELECT", "DELETE") else f" WITH CHECK ({condition})"
            statements.append(
                f"CREATE POLICY {name} ON {schema}.{table} AS RESTRICTIVE FOR {command} TO {runtime}{using}{check}"
            )
    return statements


def _keyword(attribute: str, value: bool) -> str:
    return ("" if value else "NO") + _KEYWORDS[attribute]


def _attributes(wanted: dict[str, bool]) -> str:
    return " ".join(_keyword(a, v) for a, v in wanted.items())


def _changes(row: Any, wanted: dict[str, bool], *, owner: bool, schema: str) -> list[str]:
    """What create_roles would change of the existing role *row*."""
    changes = [f"{_keyword(a, row[a])} -> {_keyword(a, v)}" for a, v in wanted.items() if row[a] is not v]
    if owner and not row["owns_schema"]:
        changes.append(f"would own schema {schema!r} and its tables")
    if not owner and not row["uses_schema"]:
        changes.append(f"would be granted the use of schema {schema!r}")
    return changes


@dataclass(frozen=True, slots=True)
class Roles:
    """What :func:`create_roles` set up."""

    owner: str
    runtime: str
    created: tuple[str, ...]
    tenant: str | None = None
    """The tenant the runtime role is bound to (``None``: not bound)."""
    user: str | None = None
    """The user of that tenant the runtime role is bound to (``None``: every user)."""


def _role(name: str, what: str) -> str:
    check.identifier(name, what)
    return quote_ident(name)


async def create_roles(
    store: PostgresSessionStore,
    *,
    owner: str,
    runtime: str,
    tenant: str | None = None,
    user: str | None = None,
    force: bool = False,
) -> Roles:
    """Create the *owner* and *runtime* roles for the store's schema, or set up again the
    roles it set up before (granting what later migrations need).

    With *tenant*, the runtime role is bound to that tenant (and with *user*, to that user of
    it): see the module docstring.

    A role that exists with other attributes, or does not hold the schema yet, raises
    :class:`~convostore.errors.RoleConflict` and nothing changes; with *force* it is changed
    as described in the module docstring. The schema must be migrated first.
    """
    if owner == runtime:
        raise ConfigurationError("the owner and the runtime role must differ")
    owner_q, runtime_q = _role(owner, "owner"), _role(runtime, "runtime")
    schema = quote_ident(store.schema)
    if user is not None and tenant is None:
        raise ConfigurationError("a role is bound to a user of a tenant: give the tenant too")
    binding = (
        None
        if tenant is None
        else (check.scope_name(tenant, "tenant"), None if user is None else check.scope_name(user, "user"))
    )

    async def setup(conn: Connection) -> tuple[str, ...]:
        if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.convostore_migrations") is None:
            raise SchemaNotReady(f"schema {store.schema!r} is not migrated: run `convostore migrate` first")
        if binding is not None and await is_distributed(conn, f"{schema}.agent_sessions"):
            raise ConfigurationError(f"cannot bind {runtime!r} to a tenant: {BOUND_ROLES_ON_CITUS}")
        created = []
        async with conn.transaction():
            existing = {r["rolname"]: r for r in await conn.fetch(_EXISTING, [owner, runtime], store.schema)}
            wanted = {owner: _OWNER_ATTRIBUTES, runtime: _RUNTIME_ATTRIBUTES}
            bound = await conn.fetchrow(
                f"SELECT tenant_id, user_id FROM {schema}.convostore_bound_roles WHERE role_name = $1", runtime
            )
            was = None if bound is None else (bound["tenant_id"], bound["user_id"])
            if not force:
                changes = tuple(
                    f"{name}: {change}"
                    for name, row in existing.items()
                    for change in _changes(row, wanted[name], owner=name == owner, schema=store.schema)
                )
                if runtime in existing and was != binding:
                    changes += (f"{runtime}: bound to {_binding(was)} -> bound to {_binding(binding)}",)
                if changes:
                    raise RoleConflict(
                        "existing roles would change (" + "; ".join(changes) + "): nothing was changed; "
                        "give force=True (--force) to change them anyway",
                        changes,
                    )
            for name, quoted in ((owner, owner_q), (runtime, runtime_q)):
                if name not in existing:
                    await conn.execute(f"CREATE ROLE {quoted}")
                    created.append(name)
                await conn.execute(f"ALTER ROLE {quoted} {_attributes(wanted[name])}")
            await conn.execute(f"ALTER SCHEMA {schema} OWNER TO {owner_q}")
            for table in _TABLES:
                await conn.execute(f"ALTER TABLE {schema}.{table} OWNER TO {owner_q}")
            for function in _FUNCTIONS:
                await conn.execute(f"ALTER FUNCTION {schema}.{function} OWNER TO {owner_q}")
            await conn.execute(f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")
            await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {runtime_q}")
            await conn.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.agent_sessions, {schema}.conversation_messages, "
                f"{schema}.conversation_branches, {schema}.conversation_usage, {schema}.convostore_state TO {runtime_q}"
            )
            ledgers = f"{schema}.convostore_migrations, {schema}.convostore_functions"
            await conn.execute(f"GRANT SELECT ON {ledgers} TO {runtime_q}")  # a store checks both
            # The server checks keys (hashes only); creating and revoking them is the owner's.
            await conn.execute(f"GRANT SELECT ON {schema}.convostore_api_keys TO {runtime_q}")
            # Signing a browser out ends the key's sign-ins (convostore.keys.sign_out).
            await conn.execute(f"GRANT UPDATE (sign_outs) ON {schema}.convostore_api_keys TO {runtime_q}")
            # The application's columns only: db_role (session_user) and at are the database's.
            await conn.execute(f"REVOKE ALL ON {schema}.convostore_audit FROM {runtime_q}")
            await conn.execute(f"GRANT INSERT ({_AUDIT_COLUMNS}) ON {schema}.convostore_audit TO {runtime_q}")
            for function in _FUNCTIONS:
                await conn.execute(f"REVOKE ALL ON FUNCTION {schema}.{function} FROM PUBLIC")
                await conn.execute(f"GRANT EXECUTE ON FUNCTION {schema}.{function} TO {runtime_q}")
            if was is not None or binding is not None:
                await _bind(conn, store.schema, runtime, binding)
        return tuple(created)

    created = await store._scope.runner.run("roles create", setup)
    return Roles(owner, runtime, created, *(binding or (None, None)))


def _binding(binding: tuple[str, str | None] | None) -> str:
    if binding is None:
        return "no tenant"
    tenant, user = binding
    return f"tenant {tenant!r}" + ("" if user is None else f", user {user!r}")


async def _bind(conn: Connection, schema_name: str, runtime: str, binding: tuple[str, str | None] | None) -> None:
    """Replace role *runtime*'s bound policies and recorded binding in *schema_name* by
    *binding* (``None``: unbound), in the caller's transaction."""
    schema = quote_ident(schema_name)
    oid = await conn.fetchval("SELECT $1::regrole::oid", quote_ident(runtime))
    for row in await conn.fetch(_BOUND_POLICIES, oid, schema_name):
        await conn.execute(f"DROP POLICY {quote_ident(row['polname'])} ON {schema}.{quote_ident(row['relname'])}")
    await conn.execute(f"DELETE FROM {schema}.convostore_bound_roles WHERE role_name = $1", runtime)
    if binding is None:
        return
    for statement in _bound_policies(schema, quote_ident(runtime), oid, *binding):
        await conn.execute(statement)
    await conn.execute(
        f"INSERT INTO {schema}.convostore_bound_roles (role_name, tenant_id, user_id) VALUES ($1, $2, $3)",
        runtime,
        *binding,
    )
