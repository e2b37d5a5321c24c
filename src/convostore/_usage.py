"""What turns cost (tokens, requests, durations), recorded per turn and summed."""

from __future__ import annotations

import uuid
from datetime import datetime

from . import _validate as check
from ._scope import Scope
from .errors import InvalidInput
from .models import TurnUsage, UsageTotal

_COUNTS = ("requests", "input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens")
_GROUPS = ("session", "user", "agent", "day")


async def record_usage(
    s: Scope, session_id: str, usage: TurnUsage, usage_id: str | None, branch: str, user_id: str | None
) -> None:
    """The store's ``record_usage`` (documented there)."""
    sid = check.identifier(session_id, "session_id")
    uid = s.acting_user(user_id)
    line = check.identifier(branch, "branch")
    if not isinstance(usage, TurnUsage):
        raise InvalidInput(f"usage must be a TurnUsage, not {type(usage).__name__}")
    counts = []
    for name in _COUNTS:
        value = getattr(usage, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
            raise InvalidInput(f"usage.{name} must be a non-negative int, not {value!r}")
        counts.append(value)
    model = check.optional_identifier(usage.model, "usage.model")
    duration = usage.duration
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 <= duration < 1e9
    ):
        raise InvalidInput(f"usage.duration must be a non-negative number of seconds, not {duration!r}")
    turn = check.identifier(usage_id, "usage_id") if usage_id is not None else uuid.uuid4().hex
    args = (s.tenant, sid, uid, turn, line, model, *counts, None if duration is None else float(duration))
    stored = await s.write("record_usage", lambda c: c.fetchval(s.queries.record_usage, *args), session_id=sid)
    if stored is None:  # recorded before (a retry), or no such session of this user
        why = await s.why_not("record_usage", sid, uid)
        if why is not None:
            raise why


async def usage(
    s: Scope,
    by: str,
    session_id: str | None,
    user_id: str | None,
    agent_name: str | None,
    since: datetime | None,
    until: datetime | None,
    all_tenants: bool,
) -> list[UsageTotal]:
    """The store's ``usage`` (documented there)."""
    if by not in _GROUPS:
        raise InvalidInput(f"by must be 'session', 'user', 'agent' or 'day', not {by!r}")
    for name, value in (("since", since), ("until", until)):
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
            raise InvalidInput(f"{name} must be a timezone-aware datetime")
    sid = check.optional_identifier(session_id, "session_id")
    uid = s.acting_user(user_id)
    agent = check.optional_identifier(agent_name, "agent_name")
    tenant = await s.tenant_for(all_tenants)
    args = (tenant, uid, sid, agent, since, by, until)
    rows = await s.run(
        "usage", lambda c: c.fetch(s.queries.usage_totals, *args), session_id=sid, all_tenants=all_tenants
    )
    return [
        UsageTotal(
            tenant=r["tenant_id"],
            key=r["key"],
            turns=r["turns"],
            requests=r["requests"],
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            reasoning_tokens=r["reasoning_tokens"],
            cached_tokens=r["cached_tokens"],
            duration=r["duration"],
        )
        for r in rows
    ]
