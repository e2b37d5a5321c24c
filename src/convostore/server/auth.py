"""API keys: who a request acts for, and the store view it may use.

A key is verified against the database once, then remembered for a short while (30 s by
default) so that each request is not an extra round trip: a revoked key stops working
within that time. Only successful verifications are remembered, under the SHA-256 of the
token, never the token itself.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import AccessDenied
from ..keys import ApiKey, verify_key
from ..store import PostgresSessionStore
from .problems import ApiProblem, unauthorized

TENANT_HEADER = "X-Convostore-Tenant"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: its key and the store view the key allows."""

    key: ApiKey
    view: PostgresSessionStore


class KeyCache:
    """Verified keys by the digest of their token, each for *ttl* seconds, at most *size* of
    them (the least recently used go first)."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, ApiKey]] = OrderedDict()

    def get(self, digest: bytes) -> ApiKey | None:
        """The key remembered under *digest*, if it is still fresh."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry[1]

    def put(self, digest: bytes, key: ApiKey) -> None:
        """Remember *key* for the cache's time to live."""
        if self.ttl <= 0:
            return
        self._entries[digest] = (time.monotonic() + self.ttl, key)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class Authenticator:
    """Turns bearer tokens into :class:`Principal` objects for *store*."""

    def __init__(self, store: PostgresSessionStore, *, ttl: float = 30.0, size: int = 4096) -> None:
        self.store = store
        self.cache = KeyCache(ttl, size)

    async def key(self, token: str) -> ApiKey:
        """The valid, unrevoked key *token* is; a 401 problem otherwise."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        key = self.cache.get(digest)
        if key is not None:
            return key
        try:
            key = await verify_key(self.store, token)
        except AccessDenied:
            raise unauthorized("the API key is not valid (unknown, malformed or revoked)") from None
        self.cache.put(digest, key)
        return key

    async def principal(self, token: str | None, tenant: str | None = None) -> Principal:
        """Who *token* acts for, in *tenant* (the ``X-Convostore-Tenant`` header) if given:
        an operator's key may name any tenant (default: the server's), another key only its own."""
        if not token:
            raise unauthorized("send an API key: Authorization: Bearer csk_...")
        key = await self.key(token)
        return Principal(key, view_for(self.store, key, tenant))


def view_for(store: PostgresSessionStore, key: ApiKey, tenant: str | None) -> PostgresSessionStore:
    """The view of *store* that *key* acts in, in *tenant* if given."""
    if tenant is None:
        return key.view(store)
    if key.operator:
        return store.scoped(tenant=tenant)
    if tenant != key.tenant:
        raise ApiProblem(403, "forbidden", "Forbidden", f"this key acts in tenant {key.tenant!r} only")
    return key.view(store)
