"""What the store's concern modules share: one view's tenancy and the means to run its calls.

A :class:`Scope` is a store view's tenant, user and actor (who the audit trail names), with
the :class:`~convostore._runner.Runner` its statements run through, its SQL, its keyring
and what opens its sealed rows. :class:`~convostore.PostgresSessionStore` holds one, and
each concern module (``_sessions``, ``_messages``, ``_compaction``, ``_search``,
``_usage``, ``_state``, ``_retention``, ``_rekey``, ``_stats``, ``_branches``) is a set of
functions of it. It is also the package's interface to a store for the jobs built on it
(export and import, API keys, roles, the framework adapters): ``store._scope``, never the
store's other private parts.

Row-level security scopes a call by ``(tenant, user or "*")``; a call across tenants (an
operator's) has none, which a role subject to row-level security cannot make.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from . import _validate as check
from ._appends import Appender
from ._attempts import settle_despite_cancel
from ._crypto import Keyring, SealedTenants
from ._rows import Opener, no_key
from ._runner import Runner
from ._sql import Queries
from ._types import Connection
from ._validate import Row
from .errors import ConfigurationError, SessionNotFound, SessionOwnershipError
from .windows import TokenCounter

T = TypeVar("T")


async def fetch(sql: str, args: tuple[Any, ...], conn: Connection) -> list[Any]:
    """``conn.fetch(sql, *args)``, for ``partial`` (no closure built per call)."""
    return await conn.fetch(sql, *args)


async def execute(sql: str, args: tuple[Any, ...], conn: Connection) -> str:
    """``conn.execute(sql, *args)``, for ``partial``."""
    return await conn.execute(sql, *args)


async def nothing(conn: Connection) -> None:
    """A call that only needs a connection (``connect()``: the pool opens and migrates)."""


@dataclass(slots=True)
class Scope:
    """One store view's tenancy and means (see the module docstring)."""

    schema: str
    tenant: str
    user: str | None  # the user a view acts for (None: every user of the tenant)
    actor: str | None
    runner: Runner
    shapes: tuple[Queries, Queries]  # the statements for plain tables, and for distributed ones
    keyring: Keyring | None
    opener: Opener  # opens this tenant's sealed rows
    count_tokens: TokenCounter | None
    appender: Appender
    coalesce: bool

    @property
    def queries(self) -> Queries:
        """The SQL in use: the shape the tables were found in when the pool opened."""
        return self.shapes[self.runner.distributed]

    def view(self, tenant: str | None, user: str | None) -> Scope:
        """This scope in *tenant* (default: its own) for *user*; a user's scope is not widened."""
        new_tenant = check.scope_name(tenant, "tenant") if tenant is not None else self.tenant
        new_user = None if user is None else check.scope_name(user, "user")
        if self.user is not None and (new_user != self.user or new_tenant != self.tenant):
            raise SessionOwnershipError(f"this view acts for user {self.user!r} of tenant {self.tenant!r} only")
        return dataclasses.replace(self, tenant=new_tenant, user=new_user, opener=self.opener_for(new_tenant))

    # -- who a call acts for -----------------------------------------------------------------

    def acting_user(self, user_id: object = None) -> str | None:
        """The user a call acts for: *user_id*, or the view's user; another user is refused."""
        uid = None if user_id is None else check.scope_name(user_id, "user_id")
        if self.user is None:
            return uid
        if uid is not None and uid != self.user:
            raise SessionOwnershipError(f"this view acts for user {self.user!r}, not {uid!r}")
        return self.user

    def rls(self, all_tenants: bool = False) -> tuple[str, str] | None:
        """The row-level security scope of a call; ``None`` for an operator's call across
        tenants, which a role subject to row-level security cannot make."""
        if not all_tenants:
            self.runner.check_bound(self.tenant, self.user)
            return (self.tenant, self.user or "*")
        if self.user is not None:
            raise SessionOwnershipError(f"this view acts for user {self.user!r}; it cannot act across tenants")
        if self.runner.row_security:
            raise ConfigurationError("calls across tenants need a role that row-level security does not restrict")
        return None

    async def tenant_for(self, all_tenants: bool = False) -> str | None:
        """The tenant an operator call covers (``None``: every tenant, once the role is known
        to be allowed across tenants)."""
        if not all_tenants:
            return self.tenant
        await self.runner.run("connect", nothing)  # the pool's role decides what is allowed
        self.rls(all_tenants=True)
        return None

    async def why_not(self, what: str, sid: str, user: str | None) -> SessionNotFound | SessionOwnershipError | None:
        """Why a statement for *user*'s session *sid* (``None``: any user's) found nothing:
        there is no such session, or it is another user's; ``None`` if neither (one more
        statement: off the normal path)."""
        owner = await self.run(what, lambda c: c.fetchval(self.queries.session_owner, self.tenant, sid), session_id=sid)
        if owner is None:
            return SessionNotFound(f"session {sid!r} does not exist")
        if user is not None and owner != user:
            return SessionOwnershipError(f"session {sid!r} belongs to another user")
        return None

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        what: str,
        fn: Callable[[Connection], Awaitable[T]],
        *,
        session_id: str | None = None,
        idempotent: bool = True,
        all_tenants: bool = False,
    ) -> Awaitable[T]:
        """Run *fn* in this scope (see :meth:`Runner.run <convostore._runner.Runner.run>`)."""
        scope = self.rls(all_tenants)
        return self.runner.run(what, fn, session_id=session_id, idempotent=idempotent, scope=scope)

    def write(
        self,
        what: str,
        fn: Callable[[Connection], Awaitable[T]],
        *,
        session_id: str | None = None,
        idempotent: bool = True,
        all_tenants: bool = False,
    ) -> Awaitable[T]:
        """A write: like :meth:`run`, but a cancelled caller waits for the write to settle."""
        return settle_despite_cancel(
            self.run(what, fn, session_id=session_id, idempotent=idempotent, all_tenants=all_tenants)
        )

    def in_transaction(
        self, operation: Callable[..., Awaitable[T]], *args: Any
    ) -> Callable[[Connection], Awaitable[T]]:
        """*operation* (one of :mod:`convostore._branches`) to run in one transaction."""

        async def run(conn: Connection) -> T:
            if conn.is_in_transaction():  # the row-level security scope's, begun by the runner
                return await operation(conn, self.queries, self.tenant, *args)
            async with conn.transaction():
                return await operation(conn, self.queries, self.tenant, *args)

        return run

    # -- sealing -----------------------------------------------------------------------------

    def opener_for(self, tenant: str) -> Opener:
        """What opens the sealed rows of *tenant* (export reads several tenants')."""
        return no_key if self.keyring is None else self.keyring.opener(tenant)

    def seal_row(self, session_id: str, row: Row, branch: str = "main") -> Row:
        """A validated row of this tenant and *branch*, its content sealed when there are
        keys (import seals its rows with it)."""
        return row if self.keyring is None else self.keyring.seal_row(self.tenant, session_id, row, branch)

    def sealed_now(self, session_id: str, rows: list[Row], branch: str) -> list[Row] | None:
        """:meth:`sealed_rows` without I/O, when this event loop already knows whether the
        tenant is sealed (every append after the first): ``None`` when it does not."""
        known = self.runner.loop_local("sealed_tenants", SealedTenants).known(self.tenant)
        if self.keyring is None:
            return rows if known is False else None
        if known:
            return [self.seal_row(session_id, row, branch) for row in rows]
        return None

    async def sealed_rows(self, session_id: str, rows: list[Row], branch: str) -> list[Row]:
        """Validated rows of *branch* as they are written: sealed when there are keys (the
        tenant marked sealed first, once per event loop); without keys, refused with
        :class:`~convostore.errors.EncryptionRequired` in a tenant marked sealed."""
        tenants = self.runner.loop_local("sealed_tenants", SealedTenants)
        q, scope = self.queries, self.rls()
        if self.keyring is None:
            await tenants.refuse_plaintext(self.runner, q.get_state, self.tenant, scope)
            return rows
        await tenants.mark(self.runner, q.get_state, q.update_state, self.tenant, scope)
        return [self.seal_row(session_id, row, branch) for row in rows]

    # -- the audit trail ---------------------------------------------------------------------

    def audit_args(
        self, action: str, *, rows: int, all_tenants: bool = False, details: Mapping[str, Any] | None = None
    ) -> tuple[Any, ...]:
        """The arguments of the ``audit`` statement recording *action* made through this view
        (import records its own in its transaction)."""
        tenant = None if all_tenants else self.tenant
        return (action, self.actor, tenant, self.user, None, rows, check.metadata(details))

    async def audit(
        self, action: str, *, rows: int, all_tenants: bool = False, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record *action* in the audit trail."""
        args = self.audit_args(action, rows=rows, all_tenants=all_tenants, details=details)
        await self.write("audit", lambda c: c.execute(self.queries.audit, *args), all_tenants=all_tenants)
