"""Key rotation: re-sealing messages sealed under an older master key (or stored plaintext)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from . import _validate as check
from ._crypto import SealedTenants
from ._scope import Scope, execute, fetch
from .errors import ConfigurationError


async def rekey(
    s: Scope, include_plaintext: bool, all_tenants: bool, batch_size: int, on_batch: Callable[[int], None] | None
) -> int:
    """The store's ``rekey`` (documented there)."""
    keyring = s.keyring
    if keyring is None:
        raise ConfigurationError("rekey needs encryption keys (CONVOSTORE_ENCRYPTION_KEYS), the new one first")
    tenant = await s.tenant_for(all_tenants)
    size = check.batch_size(batch_size)
    after: tuple[str, str, int] = ("", "", 0)
    total = 0
    while True:
        page_args = (tenant, *after, keyring.current_label, include_plaintext, size)
        rows = await s.run("rekey", partial(fetch, s.queries.rekey_page, page_args), all_tenants=all_tenants)
        if not rows:
            return total
        columns: list[list[Any]] = [[] for _ in range(7)]
        tenants = s.runner.loop_local("sealed_tenants", SealedTenants)
        for t in sorted({r["tenant_id"] for r in rows}):  # sealed from now on, if not already
            await tenants.mark(s.runner, s.queries.get_state, s.queries.update_state, t, (t, "*"))
        for r in rows:
            content, tool_calls, raw = r["content"], r["tool_calls"], r["raw"]
            bound = {"role": r["role"], "tool_call_id": r["tool_call_id"], "branch": r["branch"]}
            if r["sealed"] is not None:
                content, tool_calls, raw = keyring.open(
                    r["tenant_id"], r["session_id"], r["id"], r["key_id"], r["sealed"], **bound
                )
            # Re-sealed under the current key and layout: rows of the first layout bind
            # their role, tool-call id and branch from now on.
            sealed = keyring.seal(r["tenant_id"], r["session_id"], r["id"], content, tool_calls, raw, **bound)
            values = (
                r["tenant_id"],
                r["session_id"],
                r["seq"],
                r["key_id"],
                sealed.digest,
                sealed.key_id,
                sealed.sealed,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        status = await s.write(
            "rekey", partial(execute, s.queries.rekey_update, tuple(columns)), all_tenants=all_tenants
        )
        count = int(status.split()[-1])
        total += count
        if on_batch is not None:
            on_batch(count)
        last = rows[-1]
        after = (last["session_id"], last["tenant_id"], last["seq"])
