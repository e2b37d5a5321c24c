"""Encryption at rest: what a message says, sealed with AES-GCM under a key per tenant.

Optional (``pip install 'convostore[encryption]'``, which brings ``cryptography``). The
operator provides one or more 32-byte master keys (base64, ``$CONVOSTORE_ENCRYPTION_KEYS``,
comma-separated, the first one current); each tenant's key is derived from a master key with
HKDF-SHA256. A sealed message stores:

* ``sealed``: a 12-byte random nonce and the AES-GCM ciphertext of its content, tool calls
  and raw item (as JSON), authenticated with what the row says about itself in clear (see
  below), so that a sealed value copied to another row, or a row whose clear columns were
  changed, does not open;
* ``key_id``: which master key sealed it (``k`` and 12 hex digits of its SHA-256) and which
  layout of associated data (``/2``; none: the first layout), so that rotation
  (``convostore rekey``) finds what is left to re-seal, rows of the first layout included;
* ``content``: an HMAC of the message under the tenant's key (never the text), which lets a
  retried append be recognised without revealing whether two messages say the same thing.

Ids, tenants, users, agents, roles, tool-call ids, branches, seqs, times and session
metadata stay in plaintext; full-text search cannot look into sealed messages.

Threat model. The attacker is a database writer without the keys: a role (or a stolen
backup being restored) that can run any SQL on the tables but holds no master key. Against
them sealing promises:

* confidentiality: no column says what a sealed message says;
* integrity of each row: a row whose sealed value, role, tool-call id or branch was changed
  (a ``user`` message turned ``system``: a prompt injected into the agent's context; a tool
  result pinned to another call; a message moved to another branch), or whose sealed value
  was copied from another row, session or tenant, fails to open with :class:`TamperedMessage`
  instead of being read.

It does not promise the integrity of the conversation as a whole: the writer can delete a
row, swap two rows' seqs (sealing happens before the database allocates the seq, in the
same statement as the insert, so the seq cannot be bound without a second round trip) or
insert a plaintext row, and a read shows the result. Detecting reordering and deletion needs
a per-session chain (each row authenticating its predecessor and its seq), which costs the
append a read of the session's last row under its lock. The clear columns the read path does
not return (``kind``, ``tokens``, a summary's ``covers_from``/``covers_to``, which the
database computes) only steer windows and compaction in SQL; ``kind`` is derived from the
sealed raw item. Rows of the first layout (sealed before this one) bind ids only, until
``rekey`` re-seals them.

A process without the keys may not append plaintext into a tenant whose messages are
sealed: the first sealed write of a tenant records a marker (a state row no public name can
reach), which a store without keys reads once before its first append there and then
refuses with :class:`~convostore.errors.EncryptionRequired`. That guards against a
misconfigured deployment, not against the database writer above, who can delete the marker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._codec import load_json
from ._rows import Opener
from ._validate import Row
from .errors import ConfigurationError, EncryptionRequired, KeyUnavailable, TamperedMessage

NONCE_BYTES = 12
_HKDF_INFO = b"convostore tenant key v1\0"
# The key_id suffix of rows whose associated data binds role, tool-call id and branch; a
# key_id without one is of the first layout (tenant, session and message ids only).
LAYOUT = "/2"


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
        self._openers: dict[str, Opener] = {}

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

    @property
    def current_label(self) -> str:
        """The ``key_id`` of what this keyring seals now (current key, current layout): a
        row with any other needs re-sealing."""
        return self.current + LAYOUT

    def seal(
        self,
        tenant: str,
        session_id: str,
        message_id: str,
        content: str,
        tool_calls: str | None,
        raw: str | None,
        *,
        role: str,
        tool_call_id: str | None,
        branch: str,
    ) -> Sealed:
        """Seal a message's stored content, tool calls and raw item (their column values)
        under the current key, bound to its ids, role, tool-call id and branch."""
        key = self._key(self.current, tenant)
        plain = json.dumps([content, tool_calls, raw], ensure_ascii=False, separators=(",", ":")).encode()
        nonce = secrets.token_bytes(NONCE_BYTES)
        bound = _aad_v2(tenant, session_id, message_id, role, tool_call_id, branch)
        sealed = nonce + self._cipher(self.current, tenant).encrypt(nonce, plain, bound)
        # The digest keeps the first layout's input: a retry is recognised by the ids and what
        # the message says (role and tool-call id are compared in clear beside it).
        digest = base64.b64encode(hmac.new(key, _aad(tenant, session_id, message_id) + plain, hashlib.sha256).digest())
        return Sealed(self.current_label, digest.decode(), sealed)

    def open(
        self,
        tenant: str,
        session_id: str,
        message_id: str,
        kid: str,
        sealed: bytes,
        role: str,
        tool_call_id: str | None,
        branch: str,
    ) -> tuple[str, str | None, str | None]:
        """The ``(content, tool_calls, raw)`` column values a row sealed; :class:`KeyUnavailable`
        if its key is not here, :class:`TamperedMessage` if it does not open (a bound column
        changed, or the sealed value moved from another row)."""
        return self.opener(tenant)(session_id, message_id, kid, sealed, role, tool_call_id, branch)

    def opener(self, tenant: str) -> Opener:
        """:meth:`open` for the rows of *tenant*, with less work per row (reads open many).
        One per tenant, kept."""
        found = self._openers.get(tenant)
        if found is not None:
            return found
        ciphers: dict[str, Any] = {}  # this tenant's, by stored key id (no tuple built per row)

        def open_row(
            session_id: str,
            message_id: str,
            kid: str,
            sealed: bytes,
            role: str,
            tool_call_id: str | None,
            branch: str,
        ) -> tuple[str, str | None, str | None]:
            cipher = ciphers.get(kid)
            if cipher is None:
                master, _, layout = kid.partition("/")
                if layout not in ("", "2"):
                    raise TamperedMessage(f"message {message_id!r} of session {session_id!r}: unknown key id {kid!r}")
                cipher = ciphers[kid] = self._cipher(master, tenant)
            if kid.endswith(LAYOUT):
                bound = _aad_v2(tenant, session_id, message_id, role, tool_call_id, branch)
            else:
                bound = _aad(tenant, session_id, message_id)
            try:
                plain = cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], bound)
            except Exception as exc:  # cryptography's InvalidTag: tampered, or another row's
                raise TamperedMessage(
                    f"message {message_id!r} of session {session_id!r} does not open with key {kid!r}: "
                    "its sealed value, role, tool-call id or branch is not what was sealed"
                ) from exc
            content, tool_calls, raw = _decode(plain.decode())[0]
            return content, tool_calls, raw

        self._openers[tenant] = open_row
        return open_row

    def seal_row(self, tenant: str, session_id: str, row: Sequence[Any], branch: str) -> Row:
        """A validated message row (a :class:`~convostore._validate.Row`, or a tuple of its
        columns) of *branch* with its content sealed."""
        message_id, role, content, tool_calls, tool_call_id, raw, _, _, tokens, kind = row
        sealed = self.seal(
            tenant,
            session_id,
            message_id,
            content,
            tool_calls,
            raw,
            role=role,
            tool_call_id=tool_call_id,
            branch=branch,
        )
        return Row(
            message_id, role, sealed.digest, None, tool_call_id, None, sealed.key_id, sealed.sealed, tokens, kind
        )


# What a sealed row opens to is JSON this module wrote (and AES-GCM authenticated): parsed
# without the checks for what may follow it.
_decode = json.JSONDecoder().raw_decode


def _aad(tenant: str, session_id: str, message_id: str) -> bytes:
    """The first layout's associated data (key ids without a suffix): the row's ids."""
    return "\0".join((tenant, session_id, message_id)).encode()


def _aad_v2(tenant: str, session_id: str, message_id: str, role: str, tool_call_id: str | None, branch: str) -> bytes:
    """The associated data of layout 2: the ids and what the row says about itself in clear
    and is read back as meaning. JSON, so that a missing tool-call id and every value are
    unambiguous."""
    return json.dumps(
        ["convostore/2", tenant, session_id, message_id, role, tool_call_id, branch],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def same_message(stored: Any, opened: tuple[str, str | None, str | None], sent: Row) -> bool:
    """Whether a stored row (``role``, ``tool_call_id`` and what *opened* it to: its content,
    tool calls and raw item) holds the message of the validated row *sent* (``_validate.Row``,
    before sealing): the append function's replay test, for rows whose digest it could not
    compare (sealed under another key, or stored in plaintext)."""
    content, tool_calls, raw = opened
    return (
        (stored["role"], stored["tool_call_id"], content) == (sent.role, sent.tool_call_id, sent.content)
        and load_json(tool_calls) == load_json(sent.tool_calls)
        and load_json(raw) == load_json(sent.raw)
    )


# -- which tenants are sealed ------------------------------------------------------------------

# The state row (``convostore_state``) that marks a tenant's messages sealed: an agent name
# no public call accepts (names with control characters are refused), so no app's state is it.
SEALED_MARKER = "\x1fconvostore sealed"


class _Runs(Protocol):
    async def run(
        self, what: str, fn: Callable[[Any], Awaitable[Any]], *, scope: tuple[str, str] | None = None
    ) -> Any: ...


class SealedTenants:
    """Which tenants this event loop knows to be sealed (or not), from their marker row.

    A store with keys writes the marker once per tenant before its first sealed write; a
    store without keys reads it once per tenant before its first append and refuses to
    append plaintext into a marked tenant. The answer is kept for the life of the loop: a
    process without keys that started appending before the tenant was sealed goes on (the
    rolling deployment that turns encryption on), and ``rekey(include_plaintext=True)``
    seals what it wrote.
    """

    def __init__(self) -> None:
        self._sealed: dict[str, bool] = {}

    def known(self, tenant: str) -> bool | None:
        """Whether *tenant* is known to be sealed (``None``: not known yet in this loop)."""
        return self._sealed.get(tenant)

    async def mark(self, runner: _Runs, get_state: str, update_state: str, tenant: str, scope: Any) -> None:
        """Record that *tenant* is sealed (once per loop)."""
        if self._sealed.get(tenant):
            return

        async def write(conn: Any) -> Any:
            return await conn.fetchval(update_state, tenant, SEALED_MARKER, "", '{"sealed": true}')

        await runner.run("mark_sealed", write, scope=scope)
        self._sealed[tenant] = True

    async def refuse_plaintext(self, runner: _Runs, get_state: str, tenant: str, scope: Any) -> None:
        """Raise :class:`EncryptionRequired` if *tenant* is sealed."""
        sealed = self._sealed.get(tenant)
        if sealed is None:

            async def read(conn: Any) -> Any:
                return await conn.fetchval(get_state, tenant, SEALED_MARKER, "")

            sealed = self._sealed[tenant] = await runner.run("sealed_tenant", read, scope=scope) is not None
        if sealed:
            raise EncryptionRequired(
                f"the messages of tenant {tenant!r} are sealed and this store has no encryption keys "
                "(CONVOSTORE_ENCRYPTION_KEYS): it does not append plaintext there"
            )
