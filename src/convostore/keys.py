"""API keys for ``convostore serve``.

A key is ``csk_<id>_<secret>``: the id finds its row, the secret (256 random bits) is checked
against its SHA-256, the only form stored, so the table leaks nothing usable. A key acts in
one tenant, for one user of it (a user's view) or for every user; an operator's key (no
tenant) may act across tenants. Keys are created and revoked with ``convostore keys``.

A key may expire (``expires_in``): it is refused from then on, by the database's clock, on
every verification. ``sign_outs`` counts the times a browser signed out with the key: the
browser's sign-in tokens carry the count they were issued under, so one sign-out ends them
all (see :mod:`convostore.server.ui`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from . import _validate as check
from ._types import Connection
from .errors import AccessDenied, ConfigurationError
from .store import PostgresSessionStore

PREFIX = "csk_"
_TOKEN = re.compile(r"csk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")
KEY_ID = re.compile(r"[0-9a-f]{16}\Z")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored (without its secret)."""

    id: str
    name: str
    tenant: str | None
    user: str | None
    created_at: datetime
    revoked_at: datetime | None = None
    expires_at: datetime | None = None
    sign_outs: int = 0

    @property
    def operator(self) -> bool:
        """Whether the key acts across tenants."""
        return self.tenant is None

    def view(self, store: PostgresSessionStore) -> PostgresSessionStore:
        """*store* as this key may use it: its tenant and user (an operator's: *store* as it is)."""
        if self.tenant is None:
            return store
        return store.scoped(tenant=self.tenant, user=self.user)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _key(row: Any, key_id: str | None = None) -> ApiKey:
    return ApiKey(
        key_id or row["id"],
        row["name"],
        row["tenant_id"],
        row["user_id"],
        row["created_at"],
        row["revoked_at"],
        row["expires_at"],
        row["sign_outs"],
    )


async def create_key(
    store: PostgresSessionStore,
    *,
    name: str = "",
    user: str | None = None,
    operator: bool = False,
    expires_in: timedelta | float | None = None,
) -> tuple[str, ApiKey]:
    """Create a key for the store's tenant (and *user*, if given), or with *operator* a key
    across tenants, valid for *expires_in* (a timedelta or seconds; ``None``: until revoked);
    return the token (shown once: only its hash is kept) and the key."""
    lifetime = check.duration(expires_in, "expires_in")
    if operator and user is not None:
        raise ConfigurationError("an operator's key acts for every user: give no user")
    if not isinstance(name, str) or len(name) > 200:
        raise ConfigurationError("a key's name is a string of at most 200 characters")
    check.check_text(name, "name")
    tenant = None if operator else store.tenant
    owner = None if user is None else check.scope_name(user, "user")
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    sql = store._scope.queries.insert_key

    async def insert(conn: Any) -> Any:
        return await conn.fetchrow(sql, key_id, _digest(secret), name, tenant, owner, lifetime)

    row = await store._scope.runner.run("create_key", insert)
    await store.audit("create_api_key", rows=1, all_tenants=operator, details={"key_id": key_id, "user": owner})
    return f"{PREFIX}{key_id}_{secret}", _key(row)


async def verify_key(store: PostgresSessionStore, token: str) -> ApiKey:
    """The key *token* is, if it is valid, not revoked and not expired; else :class:`AccessDenied`."""
    match = _TOKEN.match(token) if isinstance(token, str) else None
    if match is None:
        raise AccessDenied("not a convostore API key")
    key_id, secret = match.groups()
    row = await _fetch_key(store, key_id)
    # Compared in constant time, and the same refusal whatever failed.
    if row is None or not hmac.compare_digest(row["secret_hash"], _digest(secret)) or not _usable(row):
        raise AccessDenied("unknown, revoked or expired API key")
    return _key(row, key_id)


async def key_by_id(store: PostgresSessionStore, key_id: str) -> ApiKey:
    """Key *key_id* as stored now, if it is neither revoked nor expired; else
    :class:`AccessDenied`. For callers that proved otherwise that the key was presented (the
    browser's signed sign-in token): the id alone is no credential."""
    row = await _fetch_key(store, key_id) if isinstance(key_id, str) and KEY_ID.match(key_id) else None
    if row is None or not _usable(row):
        raise AccessDenied("unknown, revoked or expired API key")
    return _key(row, key_id)


async def sign_out(store: PostgresSessionStore, key_id: str) -> int | None:
    """Count a sign-out of key *key_id*: every browser token issued under the previous count
    stops working. Return the new count (``None``: there is no such key)."""
    sql = store._scope.queries.sign_out

    async def update(conn: Connection) -> Any:
        return await conn.fetchval(sql, key_id)

    count = await store._scope.runner.run("sign_out", update)
    return None if count is None else int(count)


async def _fetch_key(store: PostgresSessionStore, key_id: str) -> asyncpg.Record | None:
    sql = store._scope.queries.key

    async def fetch(conn: Connection) -> asyncpg.Record | None:
        return await conn.fetchrow(sql, key_id)

    return await store._scope.runner.run("verify_key", fetch)


def _usable(row: asyncpg.Record) -> bool:
    return row["revoked_at"] is None and not row["expired"]


async def list_keys(store: PostgresSessionStore, *, all_tenants: bool = False) -> list[ApiKey]:
    """The keys of the store's tenant (every key, operators' too, with *all_tenants*)."""
    sql = store._scope.queries.keys
    tenant = None if all_tenants else store.tenant

    async def fetch(conn: Connection) -> list[asyncpg.Record]:
        return await conn.fetch(sql, tenant)

    return [_key(r) for r in await store._scope.runner.run("list_keys", fetch)]


async def revoke_key(store: PostgresSessionStore, key_id: str, *, all_tenants: bool = False) -> bool:
    """Revoke key *key_id* of the store's tenant (any key with *all_tenants*); ``False`` if
    there is no such key still valid."""
    q = store._scope.queries
    tenant = None if all_tenants else store.tenant

    async def revoke(conn: Any) -> Any:
        return await conn.fetchval(q.revoke_key, key_id, tenant)

    done = await store._scope.runner.run("revoke_key", revoke) is not None
    if done:
        await store.audit("revoke_api_key", rows=1, all_tenants=all_tenants, details={"key_id": key_id})
    return done
