"""State an agent keeps beside its conversations: shared by its users, or one user's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _validate as check
from ._codec import load_json
from ._scope import Scope


def _owner(s: Scope, user_id: str | None) -> str:
    owner = s.acting_user(user_id) if user_id is not None else None
    return "" if owner is None else owner


async def get_state(s: Scope, agent_name: str, user_id: str | None) -> dict[str, Any]:
    """The store's ``get_state`` (documented there)."""
    agent = check.identifier(agent_name, "agent_name")
    owner = _owner(s, user_id)
    state = await s.run("get_state", lambda c: c.fetchval(s.queries.get_state, s.tenant, agent, owner))
    return {} if state is None else dict(load_json(state))


async def update_state(s: Scope, agent_name: str, patch: Mapping[str, Any], user_id: str | None) -> dict[str, Any]:
    """The store's ``update_state`` (documented there)."""
    agent = check.identifier(agent_name, "agent_name")
    owner = _owner(s, user_id)
    value = check.metadata(patch)
    state = await s.write("update_state", lambda c: c.fetchval(s.queries.update_state, s.tenant, agent, owner, value))
    return dict(load_json(state))
