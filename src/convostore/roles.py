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

Neither role gets a password here: set them with ``ALTER ROLE ... PASSWORD`` (or your
secret manager), or use the server's other authentication methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _validate as check
from ._sql import quote_ident
from ._types import Connection
from .errors import ConfigurationError, RoleConflict, SchemaNotReady
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


def _role(name: str, what: str) -> str:
    check.identifier(name, what)
    return quote_ident(name)


async def create_roles(store: PostgresSessionStore, *, owner: str, runtime: str, force: bool = False) -> Roles:
    """Create the *owner* and *runtime* roles for the store's schema, or set up again the
    roles it set up before (granting what later migrations need).

    A role that exists with other attributes, or does not hold the schema yet, raises
    :class:`~convostore.errors.RoleConflict` and nothing changes; with *force* it is changed
    as described in the module docstring. The schema must be migrated first.
    """
    if owner == runtime:
        raise ConfigurationError("the owner and the runtime role must differ")
    owner_q, runtime_q = _role(owner, "owner"), _role(runtime, "runtime")
    schema = quote_ident(store.schema)

    async def setup(conn: Connection) -> tuple[str, ...]:
        if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.convostore_migrations") is None:
            raise SchemaNotReady(f"schema {store.schema!r} is not migrated: run `convostore migrate` first")
        created = []
        async with conn.transaction():
            existing = {r["rolname"]: r for r in await conn.fetch(_EXISTING, [owner, runtime], store.schema)}
            wanted = {owner: _OWNER_ATTRIBUTES, runtime: _RUNTIME_ATTRIBUTES}
            if not force:
                changes = tuple(
                    f"{name}: {change}"
                    for name, row in existing.items()
                    for change in _changes(row, wanted[name], owner=name == owner, schema=store.schema)
                )
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
        return tuple(created)

    created = await store._scope.runner.run("roles create", setup)
    return Roles(owner, runtime, created)
