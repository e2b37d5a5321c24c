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


async def _expire(store: PostgresSessionStore, key_id: str) -> None:
    """Move a key's expiry into the past, as time passing would (the database's clock judges)."""
    await store.pool.execute(
        f"UPDATE \"{store.schema}\".convostore_api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
        key_id,
    )


async def test_a_key_with_an_expiry_is_refused_once_it_passes(store: PostgresSessionStore) -> None:
    from datetime import timedelta

    from convostore import InvalidInput
    from convostore.keys import key_by_id

    token, key = await create_key(store, name="for a month", expires_in=timedelta(days=30))
    assert key.expires_at is not None
    assert timedelta(days=29) < key.expires_at - key.created_at <= timedelta(days=30)
    assert (await verify_key(store, token)).expires_at == key.expires_at
    assert (await key_by_id(store, key.id)).id == key.id
    forever_token, forever = await create_key(store)
    assert forever.expires_at is None
    await _expire(store, key.id)
    with pytest.raises(AccessDenied):
        await verify_key(store, token)
    with pytest.raises(AccessDenied):
        await key_by_id(store, key.id)
    await verify_key(store, forever_token)
    listed = {k.id: k for k in await list_keys(store)}
    assert listed[key.id].expires_at is not None
    assert listed[forever.id].expires_at is None
    for bad in (0, -1, timedelta(0), float("inf"), "30d"):
        with pytest.raises(InvalidInput):
            await create_key(store, expires_in=bad)  # type: ignore[arg-type]
    assert len(await list_keys(store)) == 2  # refused before anything was written


def test_the_cli_creates_a_key_that_expires(database_url: str, schema_name: str) -> None:
    import json

    runner, env = CliRunner(), {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}
    created = runner.invoke(app, ["keys", "create", "--name", "temp", "--expires-in", "30d"], env=env)
    assert created.exit_code == 0, created.output
    assert "valid until" in created.output
    [listed] = json.loads(runner.invoke(app, ["keys", "list", "--json"], env=env).output)
    assert listed["name"] == "temp"
    assert listed["expires_at"] is not None
    table = runner.invoke(app, ["keys", "list"], env={**env, "COLUMNS": "200"})
    assert "expires" in table.output
    refused = runner.invoke(app, ["keys", "create", "--expires-in", "1m"], env=env)
    assert refused.exit_code == 2  # "m" is ambiguous: a usage error, no key made
    assert len(json.loads(runner.invoke(app, ["keys", "list", "--json"], env=env).output)) == 1
