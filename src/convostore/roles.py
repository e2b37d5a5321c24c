"""The two database roles of a production deployment: an owner for migrations, a runtime
role for the application, which row-level security restricts.

``create_roles`` (the ``convostore roles create`` command) is run once, after the first
``migrate``, by a role that may create roles (a superuser or ``CREATEROLE`` admin):

* the **owner** role owns the schema, the tables and the functions; migrations run as it.
  As the tables' owner it is not restricted by row-level security: keep its credentials
  for migrations and operators.
* the **runtime** role can read and write sessions and messages, call the append and read
  functions, read the migration ledger and insert into the audit trail, nothing more: it
  cannot create or alter anything, cannot bypass row-level security, and cannot rewrite
  or even read the audit trail.

Neither role gets a password here: set them with ``ALTER ROLE ... PASSWORD`` (or your
secret manager), or use the server's other authentication methods.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _validate as check
from ._sql import quote_ident
from ._types import Connection
from .errors import ConfigurationError, SchemaNotReady
from .store import PostgresSessionStore

_TABLES = (
    "agent_sessions",
    "conversation_messages",
    "conversation_branches",
    "conversation_usage",
    "convostore_migrations",
    "convostore_audit",
    "convostore_api_keys",
    "convostore_state",
)
_FUNCTIONS = (
    "convostore_append",
    "convostore_append_sharded",
    "convostore_hold_shards",
    "convostore_read",
    "convostore_compact",
)


@dataclass(frozen=True, slots=True)
class Roles:
    """What :func:`create_roles` set up."""

    owner: str
    runtime: str
    created: tuple[str, ...]


def _role(name: str, what: str) -> str:
    check.identifier(name, what)
    return quote_ident(name)


async def create_roles(store: PostgresSessionStore, *, owner: str, runtime: str) -> Roles:
    """Create (or update) the *owner* and *runtime* roles for the store's schema.

    Idempotent: existing roles are kept (their attributes set as described in the module
    docstring), and privileges are granted again. The schema must be migrated first.
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
            for name, quoted, attributes in (
                (owner, owner_q, "LOGIN NOBYPASSRLS"),
                (runtime, runtime_q, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"),
            ):
                if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name):
                    await conn.execute(f"CREATE ROLE {quoted}")
                    created.append(name)
                await conn.execute(f"ALTER ROLE {quoted} {attributes}")
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
            await conn.execute(f"GRANT SELECT ON {schema}.convostore_migrations TO {runtime_q}")
            # The server checks keys (hashes only); creating and revoking them is the owner's.
            await conn.execute(f"GRANT SELECT ON {schema}.convostore_api_keys TO {runtime_q}")
            await conn.execute(f"REVOKE ALL ON {schema}.convostore_audit FROM {runtime_q}")
            await conn.execute(f"GRANT INSERT ON {schema}.convostore_audit TO {runtime_q}")
            for function in _FUNCTIONS:
                await conn.execute(f"REVOKE ALL ON FUNCTION {schema}.{function} FROM PUBLIC")
                await conn.execute(f"GRANT EXECUTE ON FUNCTION {schema}.{function} TO {runtime_q}")
        return tuple(created)

    created = await store._scope.runner.run("roles create", setup)
    return Roles(owner, runtime, created)
