"""Encryption at rest: what a message says, sealed with AES-GCM under a key per tenant.

Optional (``pip install 'convostore[encryption]'``, which brings ``cryptography``). The
operator provides one or more 32-byte master keys (base64, ``$CONVOSTORE_ENCRYPTION_KEYS``,
comma-separated, the first one current); each tenant's key is derived from a master key with
HKDF-SHA256. A sealed message stores:

* ``sealed``: a 12-byte random nonce and the AES-GCM ciphertext of its content, tool calls
  and raw item (as JSON), authenticated with the tenant, session and message ids, so that a
  sealed value copied to another row does not open;
* ``key_id``: which master key sealed it (``k`` and 12 hex digits of its SHA-256), so that
  rotation (``convostore rekey``) finds what is left to re-seal;
* ``content``: an HMAC of the message under the tenant's key (never the text), which lets a
  retried append be recognised without revealing whether two messages say the same thing.

Ids, tenants, users, agents, roles, tool-call ids, seqs, times and session metadata stay in
plaintext; full-text search cannot look into sealed messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, KeyUnavailable

NONCE_BYTES = 12
_HKDF_INFO = b"convostore tenant key v1\0"


@dataclass(frozen=True, slots=True)
class Sealed:
    """A message's sealed columns."""

    key_id: str
    digest: str
    sealed: bytes


def key_id(master: bytes) -> str:
    """The id stored with what *master* sealed."""
    return "k" + hashlib.sha256(master).hexdigest()[:12]


def parse_keys(text: str | None) -> list[bytes]:
    """Master keys from ``$CONVOSTORE_ENCRYPTION_KEYS``-style text (base64, comma-separated)."""
    keys = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        try:
            key = base64.b64decode(part.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError("an encryption key is not valid base64") from exc
        if len(key) != 32:
            raise ConfigurationError(f"an encryption key must be 32 bytes, not {len(key)}")
        keys.append(key)
    return keys


def new_key() -> str:
    """A fresh master key, base64 (what ``convostore keygen`` prints)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


class Keyring:
    """The master keys a store may use: the first seals, every one opens what it sealed."""

    def __init__(self, masters: list[bytes]) -> None:
        if not masters:
            raise ConfigurationError("encryption needs at least one master key")
        try:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        except ImportError as exc:
            raise ConfigurationError(
                "encryption needs the cryptography package: pip install 'convostore[encryption]'"
            ) from exc
        self._aesgcm, self._hkdf, self._sha256 = AESGCM, HKDF, hashes.SHA256
        self._masters = {key_id(m): m for m in masters}
        self.current = key_id(masters[0])
        self._tenant_keys: dict[tuple[str, str], bytes] = {}
        # The cipher of each tenant key, built once (its key schedule costs more than opening
        # a short message).
        self._ciphers: dict[tuple[str, str], Any] = {}
        self._openers: dict[str, Callable[[str, str, str, bytes], tuple[str, str | None, str | None]]] = {}

    @classmethod
    def from_env(cls) -> Keyring | None:
        """The keyring of ``$CONVOSTORE_ENCRYPTION_KEYS``, or ``None`` when it is unset."""
        keys = parse_keys(os.environ.get("CONVOSTORE_ENCRYPTION_KEYS"))
        return cls(keys) if keys else None

    def _key(self, kid: str, tenant: str) -> bytes:
        cached = self._tenant_keys.get((kid, tenant))
        if cached is None:
            master = self._masters.get(kid)
            if master is None:
                raise KeyUnavailable(f"no master key {kid!r} is configured (CONVOSTORE_ENCRYPTION_KEYS)")
            derive = self._hkdf(algorithm=self._sha256(), length=32, salt=None, info=_HKDF_INFO + tenant.encode())
            cached = self._tenant_keys[(kid, tenant)] = derive.derive(master)
        return cached

    def _cipher(self, kid: str, tenant: str) -> Any:
        cipher = self._ciphers.get((kid, tenant))
        if cipher is None:
            cipher = self._ciphers[(kid, tenant)] = self._aesgcm(self._key(kid, tenant))
        return cipher

    def seal(
        self, tenant: str, session_id: str, message_id: str, content: str, tool_calls: str | None, raw: str | None
    ) -> Sealed:
        """Seal a message's stored content, tool calls and raw item (their column values)
        under the current key."""
        key = self._key(self.current, tenant)
        plain = json.dumps([content, tool_calls, raw], ensure_ascii=False, separators=(",", ":")).encode()
        aad = _aad(tenant, session_id, message_id)
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = nonce + self._cipher(self.current, tenant).encrypt(nonce, plain, aad)
        digest = base64.b64encode(hmac.new(key, aad + plain, hashlib.sha256).digest()).decode()
        return Sealed(self.current, digest, sealed)

    def open(
        self, tenant: str, session_id: str, message_id: str, kid: str, sealed: bytes
    ) -> tuple[str, str | None, str | None]:
        """The ``(content, tool_calls, raw)`` column values a row sealed; :class:`KeyUnavailable`
        if its key is not here or it does not open (tampered, or moved from another row)."""
        return self.opener(tenant)(session_id, message_id, kid, sealed)

    def opener(self, tenant: str) -> Callable[[str, str, str, bytes], tuple[str, str | None, str | None]]:
        """:meth:`open` for the rows of *tenant*, with less work per row (reads open many).
        One per tenant, kept."""
        found = self._openers.get(tenant)
        if found is not None:
            return found
        ciphers: dict[str, Any] = {}  # this tenant's, by key id (no tuple built per row)

        def open_row(session_id: str, message_id: str, kid: str, sealed: bytes) -> tuple[str, str | None, str | None]:
            cipher = ciphers.get(kid)
            if cipher is None:
                cipher = ciphers[kid] = self._cipher(kid, tenant)
            try:
                plain = cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(tenant, session_id, message_id))
            except Exception as exc:  # cryptography's InvalidTag: wrong key, tampered, or another row's
                raise KeyUnavailable(
                    f"message {message_id!r} of session {session_id!r} does not open with key {kid!r}"
                ) from exc
            content, tool_calls, raw = _decode(plain.decode())[0]
            return content, tool_calls, raw

        self._openers[tenant] = open_row
        return open_row

    def seal_row(self, tenant: str, session_id: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A validated message row (``_validate.Row``) with its content sealed."""
        message_id, role, content, tool_calls, tool_call_id, raw, _, _, *counted = row
        sealed = self.seal(tenant, session_id, message_id, content, tool_calls, raw)
        return (message_id, role, sealed.digest, None, tool_call_id, None, sealed.key_id, sealed.sealed, *counted)


# What a sealed row opens to is JSON this module wrote (and AES-GCM authenticated): parsed
# without the checks for what may follow it.
_decode = json.JSONDecoder().raw_decode


def _aad(tenant: str, session_id: str, message_id: str) -> bytes:
    return "\0".join((tenant, session_id, message_id)).encode()
