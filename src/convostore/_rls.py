"""Row-level security: the scope (tenant, user) a transaction sets before its statements,
when the connected role is subject to it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._attempts import milliseconds
from ._types import Connection

T = TypeVar("T")


def literal(value: str) -> str:
    """*value* as an SQL string literal, whatever ``standard_conforming_strings`` says."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def scope_settings(tenant: str, user: str, distributed: bool, statement_timeout: float | None = None) -> str:
    """The statements that set a transaction's row-level security scope (and, if given, its
    statement timeout). SET LOCAL (not set_config), which Citus propagates to the nodes the
    transaction involves when asked to."""
    propagate = "SET LOCAL citus.propagate_set_commands = 'local'; " if distributed else ""
    cap = "" if statement_timeout is None else f"; SET LOCAL statement_timeout = {milliseconds(statement_timeout)}"
    return (
        f"{propagate}SET LOCAL convostore.tenant_id = {literal(tenant)}; "
        f"SET LOCAL convostore.user_id = {literal(user)}{cap}"
    )


def in_scope(
    fn: Callable[[Connection], Awaitable[T]],
    tenant: str,
    user: str,
    distributed: bool,
    statement_timeout: float | None = None,
) -> Callable[[Connection], Awaitable[T]]:
    """*fn* in a transaction that first sets the row-level security scope (and *statement_timeout*);
    the transaction ends with the call (an aborted one is rolled back when the pool takes the
    connection back)."""
    begin = "BEGIN; " + scope_settings(tenant, user, distributed, statement_timeout)

    async def scoped(conn: Connection) -> T:
        await conn.execute(begin)
        result = await fn(conn)
        await conn.execute("COMMIT")
        return result

    return scoped
