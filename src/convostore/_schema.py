"""Getting a new pool's database ready: migrating (or checking) the schema, distributing it on
Citus when asked, and finding out how the tables and the role are set up."""

from __future__ import annotations

from ._runner import Runner
from ._sql import quote_ident
from ._types import Connection
from .citus._setup import is_distributed
from .errors import SchemaNotReady
from .migrations import apply_migrations, distribute, migration_status

# Whether the connected role is restricted by row-level security on the tables: not a
# superuser, not BYPASSRLS, and not (a member of) their owner.
_ROW_SECURITY = """
SELECT NOT (r.rolsuper OR r.rolbypassrls OR pg_has_role(current_user, c.relowner, 'USAGE')),
       to_regclass($2) IS NOT NULL
FROM pg_roles r, pg_class c WHERE r.rolname = current_user AND c.oid = to_regclass($1)
"""
# The tenant (and user) the connected role is bound to (convostore.roles), if it is.
_BINDING = "SELECT tenant_id, user_id FROM {s}.convostore_bound_roles WHERE role_name = current_user"


async def prepare(conn: Connection, runner: Runner, schema: str, migrate: bool | None, distributed: bool) -> None:
    """Run once per new pool, before any call uses it: migrate (*migrate* ``True``), or check
    the schema (``False``), or neither (``None``); distribute the tables if asked
    (*distributed*, when migrating); then tell *runner* whether the tables are distributed
    and whether this role is subject to row-level security, and bound to a tenant."""
    await _check_schema(conn, schema, migrate)
    sessions = f"{quote_ident(schema)}.agent_sessions"
    if distributed and migrate:
        await distribute(conn, schema)
    runner.distributed = await is_distributed(conn, sessions)
    runner.route_table = sessions if runner.distributed else None
    # No row before the tables exist (a store that neither migrates nor checks).
    row = await conn.fetchrow(_ROW_SECURITY, sessions, f"{quote_ident(schema)}.convostore_bound_roles")
    runner.row_security = bool(row and row[0])
    bound = await conn.fetchrow(_BINDING.format(s=quote_ident(schema))) if row and row[0] and row[1] else None
    runner.bound = None if bound is None else (bound["tenant_id"], bound["user_id"])


async def _check_schema(conn: Connection, schema: str, migrate: bool | None) -> None:
    if migrate:
        await apply_migrations(conn, schema)
    elif migrate is False:
        status = await migration_status(conn, schema)
        pending = [m for m in status if m.applied_at is None]
        if len(pending) == len(status):
            raise SchemaNotReady(f"schema {schema!r} has no convostore tables; create them with `convostore migrate`")
        if pending:
            raise SchemaNotReady(
                f"schema {schema!r} has {len(pending)} pending migrations; apply them with `convostore migrate`"
            )
