"""API keys and the browser's sign-ins: who a request acts for, and the store view it may use.

The attacker here is a client of the server: without a key, with a guessed or stolen-then-
revoked one, or holding a browser's cookie (copied off a machine, or sent over plain http).

* A key is verified against the database once, then remembered for a short while (30 s by
  default) so that each request is not an extra round trip: a revoked key stops working
  within that time; an expired one at once (its expiry travels with it). Refusals are
  remembered too (10 s), so that repeating a bogus token costs no round trip either. Both
  are kept under the SHA-256 of the token, never the token itself, and bounded in number.
* The browser's cookie is not the key but a sign-in token (:class:`SignIns`): the key's id,
  the key's sign-out count and an expiry, signed with HMAC-SHA-256 under the server's
  secret. Only the server can make one, it stops working when it expires, when the key is
  revoked or expires, and when any browser signs out with the key (the count moves on).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import AccessDenied, ConfigurationError
from ..keys import ApiKey, key_by_id, verify_key
from ..store import PostgresSessionStore
from .problems import ApiProblem, unauthorized

TENANT_HEADER = "X-Convostore-Tenant"
SECRET_ENV = "CONVOSTORE_SESSION_SECRET"

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``); injected by tests."""

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: its key and the store view the key allows."""

    key: ApiKey
    view: PostgresSessionStore


class KeyCache(Generic[K, V]):
    """Values by key, each for *ttl* seconds of *clock*, at most *size* of them (the least
    recently used go first). An entry from the future (the clock stepped back) is stale."""

    def __init__(self, ttl: float, size: int, clock: Clock = time.time) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value remembered under *key*, if it is still fresh."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry[0] <= self.clock() < entry[0] + self.ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V) -> None:
        """Remember *value* for the cache's time to live."""
        if self.ttl <= 0:
            return
        self._entries[key] = (self.clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        """Forget *key*."""
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Authenticator:
    """Turns bearer tokens (and the browser's key ids) into keys and :class:`Principal`
    objects for *store*, remembering successes for *ttl* seconds and refusals for
    *failure_ttl*, at most *size* of each."""

    def __init__(
        self,
        store: PostgresSessionStore,
        *,
        ttl: float = 30.0,
        size: int = 4096,
        failure_ttl: float = 10.0,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.cache: KeyCache[bytes, ApiKey] = KeyCache(ttl, size, clock)
        self.failures: KeyCache[bytes, bool] = KeyCache(failure_ttl, size, clock)
        self.by_id: KeyCache[str, ApiKey] = KeyCache(ttl, size, clock)

    def _current(self, key: ApiKey | None) -> ApiKey | None:
        if key is not None and key.expires_at is not None and key.expires_at.timestamp() <= self.clock():
            return None
        return key

    def remembers(self, token: str) -> bool:
        """Whether *token* is a key verified recently (checking it costs no round trip)."""
        return self._current(self.cache.get(_digest(token))) is not None

    async def key(self, token: str, *, fresh: bool = False) -> ApiKey:
        """The valid, unrevoked, unexpired key *token* is; a 401 problem otherwise. With
        *fresh*, as stored now (signing in needs the current sign-out count)."""
        digest = _digest(token)
        cached = None if fresh else self.cache.get(digest)
        key = self._current(cached)
        if key is not None:
            return key
        if cached is None and self.failures.get(digest) is None:
            try:
                key = await verify_key(self.store, token)
            except AccessDenied:
                self.failures.put(digest, True)
            else:
                self.cache.put(digest, key)
                self.by_id.put(key.id, key)
                return key
        raise unauthorized("the API key is not valid (unknown, malformed, revoked or expired)")

    async def key_by_id(self, key_id: str) -> ApiKey | None:
        """Key *key_id* (from a sign-in token the server signed), if still valid."""
        key = self._current(self.by_id.get(key_id))
        if key is not None:
            return key
        try:
            key = await key_by_id(self.store, key_id)
        except AccessDenied:
            return None
        self.by_id.put(key_id, key)
        return self._current(key)

    def forget(self, key_id: str) -> None:
        """Drop what is remembered of key *key_id* by id (after a sign-out)."""
        self.by_id.discard(key_id)

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


# -- the browser's sign-in tokens -----------------------------------------------------------------


def session_secret(secret: str | bytes | None = None) -> bytes:
    """The key that signs the browser's sign-in tokens: *secret*, else
    ``$CONVOSTORE_SESSION_SECRET``, else 32 random bytes for this process only (sign-ins
    then end when it restarts, and each process of several signs its own)."""
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or None
    if secret is None:
        return secrets.token_bytes(32)
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) < 32:
        raise ConfigurationError(
            f"the session secret ({SECRET_ENV}) must be at least 32 bytes: e.g. `openssl rand -base64 32`"
        )
    return raw


_SIGN_IN = re.compile(r"v1\.([0-9a-f]{16})\.([0-9]{1,9})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})\Z")


@dataclass(frozen=True, slots=True)
class SignIn:
    """What a valid sign-in token says: the key, its sign-out count when issued, the expiry."""

    key_id: str
    sign_outs: int
    expires: int


class SignIns:
    """Sign-in tokens ``v1.<key id>.<sign-out count>.<expiry>.<HMAC>``, valid for *lifetime*
    seconds (never past the key's own expiry), signed with *secret*."""

    def __init__(self, secret: bytes, *, lifetime: float, clock: Clock = time.time) -> None:
        self._secret = secret
        self.lifetime = lifetime
        self.clock = clock

    def _mac(self, purpose: bytes, payload: str) -> str:
        mac = hmac.new(self._secret, purpose + payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, key: ApiKey) -> str:
        """A token for a browser that just presented *key*."""
        expires = self.clock() + self.lifetime
        if key.expires_at is not None:
            expires = min(expires, key.expires_at.timestamp())
        payload = f"v1.{key.id}.{key.sign_outs}.{int(expires)}"
        return f"{payload}.{self._mac(b'sign-in|', payload)}"

    def read(self, token: str | None) -> SignIn | None:
        """What *token* says, if the server signed it and it has not expired."""
        match = _SIGN_IN.match(token) if token else None
        if match is None:
            return None
        key_id, sign_outs, expires, mac = match.groups()
        payload = token.rsplit(".", 1)[0] if token else ""
        if not hmac.compare_digest(mac, self._mac(b"sign-in|", payload)) or int(expires) <= self.clock():
            return None
        return SignIn(key_id, int(sign_outs), int(expires))

    def csrf(self, token: str) -> str:
        """The CSRF token of the forms of a browser signed in with *token*."""
        return self._mac(b"csrf|", token)
