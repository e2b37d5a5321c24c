"""API keys: shown once, stored hashed, scoped to a tenant and user or an operator, revocable."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from convostore import AccessDenied, ConfigurationError, PostgresSessionStore
from convostore.cli import app
from convostore.keys import create_key, list_keys, revoke_key, verify_key


async def test_a_key_is_verified_by_its_hash_and_scopes_a_view(store: PostgresSessionStore) -> None:
    token, key = await create_key(store, name="support desk", user="alice")
    assert token.startswith("csk_")
    assert (key.tenant, key.user, key.operator) == ("default", "alice", False)
    stored = await store.pool.fetch(f'SELECT * FROM "{store.schema}".convostore_api_keys')
    secret = token.split("_", 2)[2]  # csk_<id>_<secret>; the secret may hold "_" itself
    assert secret not in repr([dict(r) for r in stored])  # only the hash is kept
    found = await verify_key(store, token)
    assert found == key
    view = found.view(store)
    assert (view.tenant, view.user) == ("default", "alice")
    operator_token, operator = await create_key(store, operator=True)
    assert operator.operator
    assert (await verify_key(store, operator_token)).view(store) is store
    assert [k.id for k in await list_keys(store)] == [key.id]
    assert {k.id for k in await list_keys(store, all_tenants=True)} == {key.id, operator.id}


@pytest.mark.parametrize(
    "bad",
    ["", "csk_", "Bearer x", "csk_0123456789abcdef_" + "A" * 43, "csk_zz_" + "A" * 43, "csk_0123456789abcdef_short"],
)
async def test_a_bad_token_is_refused(store: PostgresSessionStore, bad: str) -> None:
    with pytest.raises(AccessDenied):
        await verify_key(store, bad)


async def test_a_wrong_secret_and_a_revoked_key_are_refused(store: PostgresSessionStore) -> None:
    token, key = await create_key(store)
    prefix, secret = token.rsplit("_", 1)
    with pytest.raises(AccessDenied):
        await verify_key(store, f"{prefix}_{'B' if secret[0] != 'B' else 'C'}{secret[1:]}")
    assert await revoke_key(store, key.id)
    assert not await revoke_key(store, key.id)
    with pytest.raises(AccessDenied):
        await verify_key(store, token)
    # Another tenant cannot revoke (or list) this tenant's keys.
    other_token, other_key = await create_key(store)
    assert not await revoke_key(store.scoped(tenant="other"), other_key.id)
    assert await list_keys(store.scoped(tenant="other")) == []
    await verify_key(store, other_token)
    with pytest.raises(ConfigurationError):
        await create_key(store, user="alice", operator=True)


def test_the_cli_creates_lists_and_revokes_keys(database_url: str, schema_name: str) -> None:
    runner, env = CliRunner(), {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
    created = runner.invoke(app, ["keys", "create", "--name", "bot", "--user", "alice"], env=env)
    assert created.exit_code == 0, created.output
    token = next(line for line in created.output.splitlines() if line.startswith("csk_"))
    key_id = token.split("_")[1]
    listed = runner.invoke(app, ["keys", "list", "--json"], env=env)
    assert key_id in listed.output
    assert token not in listed.output
    assert runner.invoke(app, ["keys", "revoke", key_id], env=env).exit_code == 0
    assert runner.invoke(app, ["keys", "revoke", key_id], env=env).exit_code == 1
