"""``convostore serve``'s HTTP API against a real PostgreSQL: every endpoint, keys and scopes,
paging both ways, idempotent appends, problem details, streaming export, erasure, spans.

Requests go through httpx's ASGI transport to ``create_app(store)`` in the test's own event
loop, with the application's lifespan running, so the store's pool is the test loop's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from convostore import InvalidIdentifier, NewMessage, PostgresSessionStore, RetryPolicy, StoreClosed, TurnUsage, Window
from convostore.keys import create_key, revoke_key
from convostore.server import create_app

from .conftest import QueryCounter

BASE = "http://convostore.test"
PROBLEMS = "urn:convostore:problem:"


def auth(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def ids(response: httpx.Response) -> list[str]:
    """The ids of a page of sessions."""
    return [s["id"] for s in response.json()["items"]]


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    """*response* is an RFC 9457 problem of *status* (and type *slug*) that leaks nothing."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert all(isinstance(body[k], str) and body[k] for k in ("type", "title", "detail"))
    if slug is not None:
        assert body["type"] == PROBLEMS + slug
    for secret in ("Traceback", "postgresql://", "asyncpg", "SELECT "):
        assert secret not in response.text
    return body


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """The cookies *response* sets, by name, with their attributes as sent."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


def cookie_value(response: httpx.Response, name: str) -> str:
    return set_cookies(response)[name].split("=", 1)[1].split(";", 1)[0]


async def sign_in(client: httpx.AsyncClient, token: str) -> tuple[str, str]:
    """Sign in through the browser's form, as a browser would: the sign-in cookie's value and
    the CSRF token of the forms it then sees. Cookies are sent by hand (the test's host is
    not https, and the cookies are Secure)."""
    form = await client.get("/ui/login")
    match = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert match is not None
    nonce = cookie_value(form, "convostore_login")
    done = await client.post(
        "/ui/login",
        data={"nonce": match.group(1), "key": token, "next": "/ui/sessions"},
        headers={"Cookie": f"convostore_login={nonce}"},
    )
    assert done.status_code == 303, done.text
    cookie = cookie_value(done, "convostore_session")
    client.cookies.clear()
    confirm = await client.get("/ui/logout", headers={"Cookie": f"convostore_session={cookie}"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', confirm.text)
    assert csrf is not None, confirm.text
    return cookie, csrf.group(1)


@dataclass
class Api:
    """A client of the app serving *store*, and the tenant-wide key *admin*."""

    client: httpx.AsyncClient
    app: FastAPI
    store: PostgresSessionStore
    admin: str

    async def key(self, *, user: str | None = None, tenant: str | None = None, operator: bool = False) -> str:
        store = self.store if tenant is None else self.store.scoped(tenant=tenant)
        token, _ = await create_key(store, user=user, operator=operator)
        return token

    async def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=auth(token or self.admin))

    async def post(self, path: str, body: Any, token: str | None = None) -> httpx.Response:
        return await self.client.post(path, json=body, headers=auth(token or self.admin))

    async def delete(self, path: str, token: str | None = None) -> httpx.Response:
        return await self.client.delete(path, headers=auth(token or self.admin))


async def _serve(store: PostgresSessionStore, **options: Any) -> AsyncIterator[Api]:
    admin, _ = await create_key(store, name="admin")
    app = create_app(store, **options)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Api(client, app, store, admin)


@pytest.fixture
async def api(store: PostgresSessionStore) -> AsyncIterator[Api]:
    async for served in _serve(store):
        yield served


# -- lifecycle, health ---------------------------------------------------------------------------


async def test_the_lifespan_opens_the_pool_in_the_running_loop_and_closes_an_owned_store(
    database_url: str, schema_name: str
) -> None:
    store = PostgresSessionStore(database_url, schema=schema_name)
    app = create_app(store, owns_store=True)
    with pytest.raises(StoreClosed):
        _ = store.pool  # nothing opened yet: construction does no I/O
    async with app.router.lifespan_context(app):
        pool = store.pool  # opened (and migrated) by the lifespan, in this loop
        token, _ = await create_key(store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            ready = await client.get("/readyz")
            listed = await client.get("/v1/sessions", headers=auth(token))
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert listed.status_code == 200
        assert store.pool is pool  # the requests used the same pool
    with pytest.raises(StoreClosed):
        _ = store.pool


async def test_health_and_readiness(api: Api, database_url: str, schema_name: str) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["migrations"] >= 1
    # A schema never migrated: the server runs, but is not ready.
    unmigrated = PostgresSessionStore(database_url, schema=schema_name + "_none", apply_migrations=False)
    async for client in _serve_unready(unmigrated):
        assert_problem(await client.get("/readyz"), 503, "schema-not-ready")
        assert (await client.get("/healthz")).status_code == 200
    # No database at all: 503 quickly, without the URL.
    nowhere = PostgresSessionStore(
        "postgresql://postgres:secret@127.0.0.1:1/nothing",
        retry=RetryPolicy(attempts=1, deadline=1.0),
        connect_timeout=0.5,
        apply_migrations=False,
    )
    async for client in _serve_unready(nowhere):
        body = assert_problem(await client.get("/readyz"), 503, "database-unavailable")
        assert "secret" not in json.dumps(body)
        assert_problem(await client.get("/v1/sessions"), 401)  # no key: refused before any database call
        unknown = auth("csk_0123456789abcdef_" + "A" * 43)
        assert_problem(await client.get("/v1/sessions", headers=unknown), 503, "database-unavailable")


async def _serve_unready(store: PostgresSessionStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, owns_store=True)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


# -- keys ---------------------------------------------------------------------------------------


async def test_requests_without_a_valid_key_are_401(api: Api) -> None:
    for headers in (
        {},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer csk_0123456789abcdef_" + "A" * 43},  # well formed, unknown
        {"Authorization": f"Bearer {api.admin[:-1]}{'B' if api.admin[-1] != 'B' else 'C'}"},  # wrong secret
    ):
        response = await api.client.get("/v1/sessions", headers=headers)
        body = assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        assert "csk_" not in body["detail"] or "Bearer csk_..." in body["detail"]
    assert (await api.get("/v1/sessions")).status_code == 200


async def test_a_revoked_key_stops_working_within_the_cache_ttl(store: PostgresSessionStore) -> None:
    async for api in _serve(store, key_cache_ttl=0.3):
        token, key = await create_key(store)
        assert (await api.get("/v1/sessions", token)).status_code == 200
        assert await revoke_key(store, key.id)
        # Remembered for the TTL (no database round trip), then refused.
        assert (await api.get("/v1/sessions", token)).status_code == 200
        await asyncio.sleep(0.35)
        assert_problem(await api.get("/v1/sessions", token), 401)
    async for api in _serve(store, key_cache_ttl=0):
        token, key = await create_key(store)
        assert (await api.get("/v1/sessions", token)).status_code == 200
        await revoke_key(store, key.id)
        assert_problem(await api.get("/v1/sessions", token), 401)


async def test_a_remembered_key_costs_no_round_trip(store: PostgresSessionStore, query_counter: QueryCounter) -> None:
    async def statements(ttl: float) -> int:
        async for api in _serve(store, key_cache_ttl=ttl):
            await api.get("/v1/usage")  # warm up: the key is verified (and remembered)
            before = query_counter.count
            for _ in range(5):
                assert (await api.get("/v1/usage")).status_code == 200
            return query_counter.count - before
        raise AssertionError("unreachable")

    remembered, checked = await statements(30.0), await statements(0.0)
    assert checked - remembered == 5  # one verification per request without the cache, none with it


async def test_the_tenant_header(api: Api) -> None:
    await api.store.create_session("alice", "a", session_id="ours")
    await api.store.scoped(tenant="other").create_session("olga", "a", session_id="theirs")
    operator = await api.key(operator=True)
    other = await api.key(tenant="other")
    # An operator's key acts in the server's tenant, or in the one it names.
    assert ids(await api.get("/v1/sessions", operator)) == ["ours"]
    named = await api.client.get("/v1/sessions", headers=auth(operator, **{"X-Convostore-Tenant": "other"}))
    assert ids(named) == ["theirs"]
    # Any other key: its own tenant only.
    assert ids(await api.get("/v1/sessions", other)) == ["theirs"]
    own = await api.client.get("/v1/sessions", headers=auth(other, **{"X-Convostore-Tenant": "other"}))
    assert ids(own) == ["theirs"]
    refused = await api.client.get("/v1/sessions", headers=auth(other, **{"X-Convostore-Tenant": "default"}))
    assert_problem(refused, 403, "forbidden")
    bad = await api.client.get("/v1/sessions", headers=auth(operator, **{"X-Convostore-Tenant": "*"}))
    assert_problem(bad, 422, "validation-error")


async def _two_users(store: PostgresSessionStore) -> tuple[str, str]:
    alice = await store.create_session("alice", "support", {"title": "alice's"})
    bob = await store.create_session("bob", "support", {"title": "bob's"})
    await store.add_messages(alice.id, [NewMessage("user", "my refund for the blue kettle")])
    await store.add_messages(bob.id, [NewMessage("user", "my refund for the red kettle")])
    await store.record_usage(alice.id, TurnUsage(input_tokens=10))
    await store.record_usage(bob.id, TurnUsage(input_tokens=20))
    return alice.id, bob.id


async def test_a_user_key_never_sees_another_users_data(api: Api) -> None:
    alice_sid, bob_sid = await _two_users(api.store)
    alice = await api.key(user="alice")
    listed = await api.get("/v1/sessions", alice)
    assert [s["id"] for s in listed.json()["items"]] == [alice_sid]
    assert_problem(await api.get("/v1/sessions", alice, user_id="bob"), 403, "forbidden")
    assert_problem(await api.get(f"/v1/sessions/{bob_sid}", alice), 404, "session-not-found")
    assert_problem(await api.get(f"/v1/sessions/{bob_sid}/messages", alice), 404, "session-not-found")
    assert_problem(await api.post(f"/v1/sessions/{bob_sid}/messages", _batch("x"), alice), 404, "session-not-found")
    assert_problem(await api.delete(f"/v1/sessions/{bob_sid}", alice), 404, "session-not-found")
    as_bob = _batch("x") | {"user_id": "bob"}
    assert_problem(await api.post(f"/v1/sessions/{alice_sid}/messages", as_bob, alice), 403, "forbidden")
    assert_problem(await api.delete("/v1/users/bob", alice), 403, "forbidden")
    assert_problem(await api.get("/v1/export", alice, session_id=bob_sid), 404)  # not among hers
    hits = (await api.get("/v1/search", alice, q="kettle")).json()["items"]
    assert [(h["session_id"], h["user_id"]) for h in hits] == [(alice_sid, "alice")]
    assert_problem(await api.get("/v1/search", alice, q="kettle", user_id="bob"), 403)
    lines = [json.loads(line) for line in (await api.get("/v1/export", alice)).text.splitlines()]
    assert lines[-1]["type"] == "end"
    lines = lines[:-1]
    assert {line.get("session_id", line.get("id")) for line in lines} == {alice_sid}
    assert {line["user_id"] for line in lines if line["type"] == "session"} == {"alice"}
    usage = (await api.get("/v1/usage", alice, by="user")).json()["items"]
    assert [u["key"] for u in usage] == ["alice"]
    # A session a user key creates is its user's.
    created = await api.post("/v1/sessions", {"agent_name": "support"}, alice)
    assert created.json()["user_id"] == "alice"
    assert_problem(await api.post("/v1/sessions", {"agent_name": "a", "user_id": "bob"}, alice), 403)


async def test_another_users_session_answers_as_one_that_does_not_exist(api: Api) -> None:
    _, bob_sid = await _two_users(api.store)
    await api.store.fork_session(bob_sid, "what-if")
    alice = await api.key(user="alice")
    cookie, csrf = await sign_in(api.client, alice)
    pages = {"Cookie": f"convostore_session={cookie}"}  # signed in to the browser

    async def answers(sid: str) -> list[tuple[int, str]]:
        path, page = f"/v1/sessions/{quote(sid, safe='')}", f"/ui/sessions/{quote(sid, safe='')}"
        responses = [
            await api.get(path, alice),
            await api.get(f"{path}/messages", alice),
            await api.get(f"{path}/messages", alice, branch="what-if"),
            await api.get(f"{path}/messages", alice, branch="nope"),
            await api.post(f"{path}/messages", _batch("x"), alice),
            await api.post(f"{path}/messages", _batch("x") | {"branch": "what-if"}, alice),
            await api.delete(path, alice),
            await api.get("/v1/export", alice, session_id=sid),
            await api.get("/v1/search", alice, q="kettle", session_id=sid),
            await api.get("/v1/usage", alice, session_id=sid),
            await api.client.get(page, headers=pages),
            await api.client.get(page, params={"branch": "what-if"}, headers=pages),
            await api.client.get(f"{page}/delete", headers=pages),
            await api.client.post(f"{page}/delete", data={"csrf": csrf}, headers=pages),
            await api.client.get("/ui/export", params={"session_id": sid}, headers=pages),
        ]
        return [(r.status_code, r.text.replace(repr(sid), "<sid>").replace(sid, "<sid>")) for r in responses]

    missing = await answers("nobody-has-this-one")
    assert await answers(bob_sid) == missing
    assert {status for status, _ in missing} == {404, 200}  # search and usage: nothing found
    # Creating with an id already taken is refused whoever holds it: ids are unique in a tenant.
    taken = await api.post("/v1/sessions", {"id": bob_sid, "agent_name": "a"}, alice)
    assert_problem(taken, 409, "session-exists")
    assert "bob" not in taken.text
    appended = await api.post(f"/v1/sessions/{bob_sid}/messages", _batch("x") | {"user_id": "alice"}, alice)
    assert_problem(appended, 404, "session-not-found")
    # Bob's session is untouched.
    assert [m.content for m in await api.store.get_messages(bob_sid)] == ["my refund for the red kettle"]


async def test_another_tenants_key_sees_nothing_of_this_tenant(api: Api) -> None:
    alice_sid, _ = await _two_users(api.store)
    stranger = await api.key(tenant="elsewhere")
    assert (await api.get("/v1/sessions", stranger)).json() == {"items": [], "next": None}
    assert_problem(await api.get(f"/v1/sessions/{alice_sid}", stranger), 404, "session-not-found")
    assert_problem(await api.get(f"/v1/sessions/{alice_sid}/messages", stranger), 404, "session-not-found")
    assert_problem(await api.delete(f"/v1/sessions/{alice_sid}", stranger), 404)
    assert (await api.get("/v1/search", stranger, q="kettle")).json()["items"] == []
    assert (await api.get("/v1/usage", stranger)).json()["items"] == []
    export = await api.get("/v1/export", stranger)
    assert export.status_code == 200
    assert [json.loads(line)["type"] for line in export.text.splitlines()] == ["end"]  # nothing but the end line
    assert (await api.delete("/v1/users/alice", stranger)).json()["sessions"] == 0
    assert (await api.get(f"/v1/sessions/{alice_sid}")).status_code == 200  # still there


# -- sessions -------------------------------------------------------------------------------


async def test_sessions_are_created_read_listed_and_deleted(api: Api) -> None:
    created = await api.post(
        "/v1/sessions",
        {"id": "s/1 é", "user_id": "alice", "agent_name": "support", "metadata": {"title": "Hi", "n": 1}, "ttl": 3600},
    )
    assert created.status_code == 201
    session = created.json()
    assert created.headers["location"] == "/v1/sessions/s%2F1%20%C3%A9"
    assert session["id"] == "s/1 é"
    assert session["metadata"] == {"title": "Hi", "n": 1}
    assert datetime.fromisoformat(session["expires_at"]) > datetime.now(UTC)
    assert "messages" not in session
    assert_problem(
        await api.post("/v1/sessions", {"id": "s/1 é", "user_id": "alice", "agent_name": "x"}), 409, "session-exists"
    )
    both = await api.post("/v1/sessions", {"user_id": "a", "agent_name": "x", "ttl": 1, "expires_in": 1})
    assert_problem(both, 422, "validation-error")
    assert_problem(await api.post("/v1/sessions", {"agent_name": "x"}), 400, "invalid-input")  # no owner
    fetched = await api.client.get("/v1/sessions/s%2F1%20%C3%A9", headers=auth(api.admin))
    assert fetched.json() == session
    assert (await api.client.delete("/v1/sessions/s%2F1%20%C3%A9", headers=auth(api.admin))).status_code == 204
    assert_problem(await api.client.delete("/v1/sessions/s%2F1%20%C3%A9", headers=auth(api.admin)), 404)
    assert_problem(await api.get("/v1/sessions/nope"), 404, "session-not-found")


# Ids of every character class a URL treats specially, with their look-alikes: each must name
# its own session through every route (and a sibling such as "report" must never answer for
# "report/delete").
AWKWARD_IDS = [
    "report", "report/delete", "s", "s/messages", "s/messages/x", "a%2Fb", "a/b", "100%", "%", "%25", "a?b=c",
    "a#b", "#", "?", "..x", "...", "a/../b", "./a", "/lead", "trail/", "a//b", "with space", " padded ", "padded",
    "quote\"s 'and' `ticks`", "back\\slash", "+;,=&@:$!*()[]{}<>|^~", "é日本語🙂", "\u202eright-to-left",
    "x" * 255, "é" * 255,
]  # fmt: skip


async def test_every_id_names_its_own_session_through_every_route(api: Api) -> None:
    locations = {}
    for n, sid in enumerate(AWKWARD_IDS):
        created = await api.post("/v1/sessions", {"id": sid, "user_id": "alice", "agent_name": "a"})
        assert created.status_code == 201, (sid, created.text)
        location = created.headers["location"]
        assert location == "/v1/sessions/" + quote(sid, safe="")
        locations[sid] = location
        appended = await api.post(f"{location}/messages", _batch(f"hello number{n}"))
        assert appended.status_code == 201, (sid, appended.text)
        assert appended.json()["items"][0]["session_id"] == sid
        # A branch named like the session: branch names travel in query strings.
        await api.store.fork_session(sid, sid, at_seq=0)
        await api.post(f"{location}/messages", _batch(f"branched number{n}") | {"branch": sid})
        await api.store.record_usage(sid, TurnUsage(input_tokens=n + 1))
    for n, sid in enumerate(AWKWARD_IDS):
        location = locations[sid]
        fetched = await api.client.get(location, headers=auth(api.admin))
        assert (fetched.status_code, fetched.json()["id"]) == (200, sid)
        messages = (await api.client.get(f"{location}/messages", headers=auth(api.admin))).json()["items"]
        assert [m["content"] for m in messages] == [f"hello number{n}"], sid
        branched = (await api.get(f"{location}/messages", branch=sid)).json()["items"]
        assert [(m["content"], m["branch"]) for m in branched] == [(f"branched number{n}", sid)]
        lines = [json.loads(line) for line in (await api.get("/v1/export", session_id=sid)).text.splitlines()]
        assert lines.pop()["type"] == "end"
        assert {line.get("session_id", line.get("id")) for line in lines} == {sid}
        hits = (await api.get("/v1/search", q=f"number{n}", session_id=sid)).json()["items"]
        assert {h["session_id"] for h in hits} == {sid}
        usage = (await api.get("/v1/usage", session_id=sid)).json()["items"]
        assert [(u["key"], u["input_tokens"]) for u in usage] == [(sid, n + 1)]
    # "s%2Fmessages" is the session "s/messages", not the messages of "s".
    assert (await api.get("/v1/sessions/s%2Fmessages")).json()["id"] == "s/messages"
    # Deleting each leaves every other one.
    remaining = set(AWKWARD_IDS)
    for sid in ["report/delete", "s/messages", *AWKWARD_IDS]:
        if sid not in remaining:
            continue
        assert (await api.client.delete(locations[sid], headers=auth(api.admin))).status_code == 204, sid
        remaining.discard(sid)
        assert set(ids(await api.get("/v1/sessions", limit=500))) == remaining, sid
        assert_problem(await api.client.get(locations[sid], headers=auth(api.admin)), 404, "session-not-found")


async def test_ids_no_url_can_carry_are_refused_when_created(api: Api) -> None:
    # "." and ".." are removed from URLs by clients and browsers ("/sessions/./messages" would
    # reach the session "messages"): never the id of a new session.
    for sid in (".", ".."):
        refused = await api.post("/v1/sessions", {"id": sid, "user_id": "alice", "agent_name": "a"})
        assert_problem(refused, 400, "invalid-input")
        with pytest.raises(InvalidIdentifier):
            await api.store.create_session("alice", "a", session_id=sid)
        with pytest.raises(InvalidIdentifier):
            await api.store.add_messages(sid, [NewMessage("user", "hi")], user_id="alice")
    assert ids(await api.get("/v1/sessions")) == []
    # A path that is no UTF-8 once decoded names no session.
    assert_problem(await api.get("/v1/sessions/%FF"), 400, "invalid-input")
    assert_problem(await api.get("/v1/sessions/a%C3"), 400, "invalid-input")


async def test_sessions_page_by_cursor_and_filter(api: Api) -> None:
    made = []
    for i in range(7):
        s = await api.store.create_session("alice" if i % 2 else "bob", f"agent-{i % 3}", {"i": i, "even": i % 2 == 0})
        made.append(s.id)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"before": cursor} if cursor else {})
        page = (await api.get("/v1/sessions", **params)).json()
        seen += [s["id"] for s in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == made[::-1]  # newest first, each once
    assert pages == 3
    assert ids(await api.get("/v1/sessions", user_id="alice")) == made[1::2][::-1]
    assert ids(await api.get("/v1/sessions", agent="agent-0")) == [made[6], made[3], made[0]]
    assert ids(await api.get("/v1/sessions", metadata='{"even": true, "i": 4}')) == [made[4]]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ids(await api.get("/v1/sessions", updated_since=future)) == []
    assert len(ids(await api.get("/v1/sessions", updated_since="2000-01-01T00:00:00Z"))) == 7
    assert_problem(await api.get("/v1/sessions", updated_since="2000-01-01T00:00:00"), 400, "invalid-input")
    assert_problem(await api.get("/v1/sessions", metadata="[1]"), 400, "invalid-input")
    not_json = base64.urlsafe_b64encode(b"not json at all").decode().rstrip("=")
    not_position = base64.urlsafe_b64encode(b'{"a": 1}').decode().rstrip("=")
    for bad in ("zzzzzzzzzz", not_json, not_position):
        assert_problem(await api.get("/v1/sessions", before=bad), 400, "bad-cursor")
    assert_problem(await api.get("/v1/sessions", before="not a cursor!"), 422)
    assert_problem(await api.get("/v1/sessions", limit=0), 422, "validation-error")


# -- messages --------------------------------------------------------------------------------


def _batch(*texts: str, ids: bool = False) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": t, **({"id": f"id-{t}"} if ids else {})}  # ids name the text
            for t in texts
        ]
    }


async def test_messages_page_both_ways(api: Api) -> None:
    session = await api.store.create_session("alice", "a")
    await api.store.add_messages(session.id, [NewMessage("user", f"m{i}") for i in range(1, 26)])
    path = f"/v1/sessions/{session.id}/messages"

    async def page(**params: Any) -> tuple[list[int], int | None, int | None]:
        body = (await api.get(path, **params)).json()
        return [m["seq"] for m in body["items"]], body["next_before"], body["next_after"]

    assert await page(limit=10) == (list(range(16, 26)), 16, None)
    assert await page(limit=10, before_seq=16) == (list(range(6, 16)), 6, 15)
    assert await page(limit=10, before_seq=6) == (list(range(1, 6)), None, 5)
    assert await page(limit=10, after_seq=0) == (list(range(1, 11)), None, 10)
    assert await page(limit=10, after_seq=10) == (list(range(11, 21)), 11, 20)
    assert await page(limit=10, after_seq=20) == (list(range(21, 26)), 21, None)
    assert await page(limit=30) == (list(range(1, 26)), None, None)
    first = (await api.get(path, limit=1, after_seq=0)).json()["items"][0]
    assert set(first) == {
        "id", "session_id", "seq", "role", "content", "tool_calls", "tool_call_id", "raw", "created_at", "branch",
        "covers",
    }  # fmt: skip
    assert (first["content"], first["branch"], first["covers"]) == ("m1", "main", None)
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None
    # An empty session is an empty page; no session, or no branch, is a 404.
    empty = await api.store.create_session("alice", "a")
    assert (await api.get(f"/v1/sessions/{empty.id}/messages")).json()["items"] == []
    assert_problem(await api.get("/v1/sessions/nope/messages"), 404, "session-not-found")
    assert_problem(await api.get(path, branch="nope"), 404, "branch-not-found")
    assert_problem(await api.get(path, limit=1001), 422)


async def test_compacted_and_branched_views(api: Api) -> None:
    session = await api.store.create_session("alice", "a")
    stored = await api.store.add_messages(session.id, [NewMessage("user", f"m{i}") for i in range(3)])
    await api.store.compact(session.id, [NewMessage("assistant", "gist")], from_seq=stored[0].seq)
    await api.store.fork_session(session.id, "what-if", at_seq=0)
    path = f"/v1/sessions/{session.id}/messages"
    view = (await api.get(path)).json()["items"]
    assert [(m["content"], m["covers"]) for m in view] == [("gist", [1, 3])]
    raw = (await api.get(path, raw="true")).json()["items"]
    assert [m["content"] for m in raw] == ["m0", "m1", "m2", "gist"]
    appended = await api.post(path, _batch("other line") | {"branch": "what-if"})
    assert appended.json()["items"][0]["branch"] == "what-if"
    assert [m["content"] for m in (await api.get(path, branch="what-if")).json()["items"]] == ["other line"]


async def test_appends_are_idempotent_with_client_ids(api: Api) -> None:
    session = await api.store.create_session("alice", "a")
    path = f"/v1/sessions/{session.id}/messages"
    first = await api.post(path, _batch("a", "b", ids=True))
    assert first.status_code == 201
    again = await api.post(path, _batch("a", "b", ids=True))
    assert again.status_code == 201  # the same answer: a client can retry blindly
    assert again.json() == first.json()
    assert [m["seq"] for m in first.json()["items"]] == [1, 2]
    assert len((await api.get(path)).json()["items"]) == 2
    changed = {"messages": [{"id": "id-a", "role": "user", "content": "not a"}]}
    assert_problem(await api.post(path, changed), 409, "duplicate-message-id")
    twice = {"messages": [{"id": "x", "role": "user", "content": "1"}, {"id": "x", "role": "user", "content": "1"}]}
    assert_problem(await api.post(path, twice), 409, "duplicate-message-id")
    # Without ids, each post is a new message.
    await api.post(path, _batch("c"))
    await api.post(path, _batch("c"))
    assert [m["content"] for m in (await api.get(path)).json()["items"]] == ["a", "b", "c", "c"]


async def test_appends_validate_and_create_on_first_write(api: Api) -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = {
        "messages": [
            {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            {"role": "item", "raw": {"type": "reasoning", "summary": []}},
        ],
        "user_id": "carol",
        "agent_name": "helper",
    }
    assert_problem(await api.post("/v1/sessions/new-one/messages", _batch("x")), 404, "session-not-found")
    created = await api.post("/v1/sessions/new-one/messages", body)
    assert created.status_code == 201, created.text
    items = created.json()["items"]
    assert [(m["role"], m["tool_call_id"]) for m in items] == [("assistant", None), ("tool", "call_1"), ("item", None)]
    assert items[0]["tool_calls"] == calls
    session = (await api.get("/v1/sessions/new-one")).json()
    assert (session["user_id"], session["agent_name"]) == ("carol", "helper")
    bad: dict[str, Any]
    for bad in (
        {"messages": []},
        {"messages": [{"role": "tool", "content": "no call id"}]},
        {"messages": [{"role": "user", "content": "x", "tool_call_id": "c"}]},
        {"messages": [{"role": "item", "content": ""}]},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": 42}]},  # strict: no coercion
        {"messages": [{"role": "user", "content": "x", "colour": "red"}]},
        {"messages": [{"role": "user", "content": "x", "id": "   "}]},
        {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]}]},
    ):
        assert_problem(await api.post("/v1/sessions/new-one/messages", bad), 422, "validation-error")
    garbled = await api.client.post(
        "/v1/sessions/new-one/messages",
        content=b"{not json",
        headers=auth(api.admin, **{"Content-Type": "application/json"}),
    )
    assert_problem(garbled, 422)


# -- search, export, erasure, usage ---------------------------------------------------------------


async def test_search_marks_hits_in_plain_text(api: Api) -> None:
    alice_sid, bob_sid = await _two_users(api.store)
    await api.store.add_messages(alice_sid, [NewMessage("user", "refund & 2 < 3 refund again")])
    found = (await api.get("/v1/search", q="refund", limit=2)).json()
    assert len(found["items"]) == 2
    assert found["next_offset"] == 2
    top = found["items"][0]
    assert top["session_id"] == alice_sid
    assert "\ue01a" not in top["snippet"]
    assert "& 2 < 3" in top["snippet"]  # text, never HTML
    assert [top["snippet"][a:b].lower() for a, b in top["highlights"]] == ["refund", "refund"]
    assert "".join(p["text"] for p in top["parts"]) == top["snippet"]
    assert [p["text"] for p in top["parts"] if p["hit"]] == ["refund", "refund"]
    rest = (await api.get("/v1/search", q="refund", limit=2, offset=2)).json()
    assert len(rest["items"]) == 1
    assert rest["next_offset"] is None
    assert {h["session_id"] for h in (await api.get("/v1/search", q="refund", user_id="bob")).json()["items"]} == {
        bob_sid
    }
    assert_problem(await api.get("/v1/search", q="   "), 422)
    assert_problem(await api.client.get("/v1/search", headers=auth(api.admin)), 422)


async def test_export_streams_json_lines(api: Api) -> None:
    sids = []
    for i in range(5):
        s = await api.store.create_session("alice", "a")
        await api.store.add_messages(s.id, [NewMessage("user", f"line {i} {j}") for j in range(3)])
        sids.append(s.id)
    response = await api.get("/v1/export")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["content-disposition"]
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) == 5 * (1 + 3) + 1  # and the end line
    assert lines[-1]["type"] == "end"
    assert {line["id"] for line in lines if line["type"] == "session"} == set(sids)
    # Sent line by line as it is read, not as one buffered body (seen at the ASGI level:
    # httpx's transport joins the parts).
    bodies = [m["body"] for m in await _asgi_get(api.app, "/v1/export", api.admin) if m["type"] == "http.response.body"]
    assert b"".join(bodies).decode() == response.text
    assert len([b for b in bodies if b]) == len(lines)
    one = await api.get("/v1/export", session_id=sids[0])
    assert [json.loads(line)["type"] for line in one.text.splitlines()] == ["session", *["message"] * 3, "end"]
    assert_problem(await api.get("/v1/export", session_id="nope"), 404, "session-not-found")


async def _asgi_get(app: FastAPI, path: str, token: str) -> list[MutableMapping[str, Any]]:
    """The ASGI messages *app* sends for ``GET path``."""
    sent: list[MutableMapping[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"convostore.test"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("convostore.test", 80),
    }

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_erasing_a_user(api: Api) -> None:
    alice_sid, bob_sid = await _two_users(api.store)
    await api.store.create_session("bob", "other")
    erased = await api.delete("/v1/users/bob")
    assert erased.status_code == 200
    assert erased.json() == {"user_id": "bob", "sessions": 2, "messages": 1}
    assert_problem(await api.get(f"/v1/sessions/{bob_sid}"), 404)
    assert (await api.get(f"/v1/sessions/{alice_sid}")).status_code == 200
    assert (await api.delete("/v1/users/bob")).json()["sessions"] == 0
    assert_problem(await api.delete("/v1/users/*"), 422)


async def test_usage_totals(api: Api) -> None:
    await _two_users(api.store)
    by_user = {u["key"]: u for u in (await api.get("/v1/usage", by="user")).json()["items"]}
    assert (by_user["alice"]["input_tokens"], by_user["bob"]["input_tokens"]) == (10, 20)
    assert by_user["alice"]["turns"] == 1
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await api.get("/v1/usage", since=later)).json()["items"] == []
    assert_problem(await api.get("/v1/usage", by="month"), 422)


# -- problems, limits, headers, OpenAPI, spans ----------------------------------------------------


async def test_every_error_is_a_problem(api: Api, database_url: str, schema_name: str) -> None:
    assert_problem(await api.client.get("/no/such/route"), 404)
    assert (await api.client.get("/no/such/route")).json()["type"] == "about:blank"
    wrong = await api.client.put("/v1/sessions", headers=auth(api.admin))
    assert_problem(wrong, 405)
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "POST"}
    invalid = assert_problem(await api.get("/v1/sessions", limit="many"), 422, "validation-error")
    assert invalid["errors"][0]["loc"] == ["query", "limit"]
    assert "input" not in invalid["errors"][0]  # what was sent is not echoed back
    # A statement that outlives its deadline: 504, and no SQL in the answer.
    session = await api.store.create_session("alice", "a")
    impatient = PostgresSessionStore(database_url, schema=schema_name, command_timeout=0.3)
    locker = await asyncpg.connect(database_url)
    try:
        async for served in _serve(impatient):
            async with locker.transaction():
                await locker.execute(
                    f'SELECT 1 FROM "{schema_name}".agent_sessions WHERE id = $1 FOR UPDATE', session.id
                )
                blocked = await served.post(f"/v1/sessions/{session.id}/messages", _batch("hello"))
            assert_problem(blocked, 504, "timeout")
    finally:
        await locker.close()
        await impatient.close()
    # A store that is closed: 503, said in general terms.
    closing = PostgresSessionStore(database_url, schema=schema_name)
    async for served in _serve(closing):
        await closing.close()
        body = assert_problem(await served.get("/v1/sessions"), 503, "database-unavailable")
        assert "closed" not in body["detail"]


async def test_json_nested_too_deep_is_a_422(api: Api) -> None:
    session = await api.store.create_session("alice", "a")
    deep = "[" * 2000 + "]" * 2000
    listed = assert_problem(await api.get("/v1/sessions", metadata='{"a":' + deep + "}"), 422, "validation-error")
    assert listed["errors"][0]["loc"] == ["query", "metadata"]
    assert "100 levels" in listed["errors"][0]["msg"]
    raw = '{"messages": [{"role": "item", "raw": ' + deep + "}]}"
    for path, body in [
        (f"/v1/sessions/{session.id}/messages", raw),
        ("/v1/sessions", '{"user_id": "alice", "agent_name": "a", "metadata": {"a": ' + deep + "}}"),
    ]:
        refused = await api.client.post(
            path, content=body, headers=auth(api.admin, **{"content-type": "application/json"})
        )
        assert assert_problem(refused, 422, "validation-error")["errors"][0]["loc"] == ["body"]
    # Brackets inside strings are text, and a hundred levels are fine.
    nested: Any = "[[[[" * 500
    for _ in range(95):
        nested = [nested]
    stored = await api.post(f"/v1/sessions/{session.id}/messages", {"messages": [{"role": "item", "raw": nested}]})
    assert stored.status_code == 201, stored.text
    assert (await api.get(f"/v1/sessions/{session.id}/messages")).json()["items"][0]["raw"] == nested
    # A cursor of nested brackets is no cursor of ours.
    cursor = base64.urlsafe_b64encode(b"[" * 1050).decode().rstrip("=")
    assert_problem(await api.get("/v1/sessions", before=cursor), 400, "bad-cursor")


async def test_the_root_leads_to_the_browser(api: Api) -> None:
    root = await api.client.get("/")
    assert root.status_code == 303
    assert root.headers["location"] == "/ui/sessions"


async def test_sealed_messages_without_their_key_are_a_500_that_says_nothing(
    database_url: str, schema_name: str
) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[key]) as sealed:
        await sealed.add_messages("secret", [NewMessage("user", "sealed text")], user_id="alice")
    async with PostgresSessionStore(database_url, schema=schema_name) as keyless:
        async for api in _serve(keyless):
            body = assert_problem(await api.get("/v1/sessions/secret/messages"), 500, "internal-error")
            assert "secret" not in body["detail"]


async def test_bodies_are_bounded(store: PostgresSessionStore) -> None:
    async for api in _serve(store, max_body=10_000):
        session = await store.create_session("alice", "a")
        path = f"/v1/sessions/{session.id}/messages"
        assert_problem(await api.post(path, _batch("x" * 20_000)), 413, "content-too-large")

        async def chunked() -> AsyncIterator[bytes]:
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(30):
                yield b"y" * 1000
            yield b'"}]}'

        streamed = await api.client.post(
            path, content=chunked(), headers=auth(api.admin, **{"Content-Type": "application/json"})
        )
        assert_problem(streamed, 413, "content-too-large")
        assert (await api.post(path, _batch("small"))).status_code == 201
    # Within the body limit, a field past its own limit is a 422.
    async for api in _serve(store):
        too_many = {"messages": [{"role": "user", "content": "x"}] * 1001}
        assert_problem(await api.post(f"/v1/sessions/{session.id}/messages", too_many), 422)


async def test_security_headers(api: Api) -> None:
    for path in ("/v1/sessions", "/ui/login", "/healthz"):
        response = await api.client.get(path, headers=auth(api.admin))
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        csp = response.headers["content-security-policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "object-src 'none'", "base-uri 'none'"):
            assert directive in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["cache-control"] == "no-store"
    static = await api.client.get("/ui/static/app.css")
    assert static.status_code == 200
    assert "max-age" in static.headers["cache-control"]


async def test_the_openapi_document_describes_keys_and_problems(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "csk_<id>_<secret>",
        "description": spec["components"]["securitySchemes"]["apiKey"]["description"],
    }
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    assert len([1 for path, *_ in operations if path.startswith("/v1/")]) == 15
    for path, _, op in operations:
        if not path.startswith("/v1/"):
            assert "security" not in op
            continue
        assert op["security"] == [{"apiKey": []}]
        for status in ("401", "403", "422", "500", "503"):
            assert list(op["responses"][status]["content"]) == ["application/problem+json"]
    export = spec["paths"]["/v1/export"]["get"]["responses"]["200"]["content"]
    assert list(export) == ["application/x-ndjson"]
    assert not any(path.startswith("/ui") for path in spec["paths"])


_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The SDK's tracer provider (one per process: the one set first, maybe by another
    module), with this module's exporter added to it."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    return _EXPORTER


async def test_each_request_is_a_span(api: Api, spans: InMemorySpanExporter) -> None:
    session = await api.store.create_session("alice", "a")
    spans.clear()
    await api.get(f"/v1/sessions/{session.id}/messages")
    await api.get("/v1/sessions/missing")
    await api.client.get("/nowhere")
    finished = spans.get_finished_spans()
    server = [s for s in finished if s.name.startswith("HTTP ")]
    assert [(s.name, s.attributes) for s in server] == [
        (
            "HTTP GET /v1/sessions/{session_id}/messages",
            {
                "http.request.method": "GET",
                "http.route": "/v1/sessions/{session_id}/messages",
                "http.response.status_code": 200,
            },
        ),
        (
            "HTTP GET /v1/sessions/{session_id}",
            {"http.request.method": "GET", "http.route": "/v1/sessions/{session_id}", "http.response.status_code": 404},
        ),
        ("HTTP GET", {"http.request.method": "GET", "http.response.status_code": 404}),
    ]
    # The store's spans are children of the request's.
    read = next(s for s in finished if s.name == "convostore get_messages")
    assert read.parent is not None
    assert read.parent.span_id == server[0].context.span_id


# -- metadata updates, windows, branches, compaction ----------------------------------------------


async def _patch(api: Api, path: str, body: Any, token: str | None = None) -> httpx.Response:
    return await api.client.patch(path, json=body, headers=auth(token or api.admin))


def _at(sid: str) -> str:
    return "/v1/sessions/" + quote(sid, safe="")


async def test_patching_a_session_merges_its_metadata(api: Api) -> None:
    sid = "tickets/42 open"
    await api.store.create_session("alice", "a", {"title": "Hi", "n": 1}, session_id=sid)
    await api.store.add_messages(sid, [NewMessage("user", "one"), NewMessage("assistant", "two")])
    patched = await _patch(api, _at(sid), {"metadata": {"title": "Refund", "tags": ["billing"], "n": None}})
    assert patched.status_code == 200, patched.text
    session = patched.json()
    assert session["id"] == sid
    assert session["metadata"] == {"title": "Refund", "tags": ["billing"], "n": None}  # top-level keys replaced
    assert session["message_count"] == 2
    assert session == (await api.client.get(_at(sid), headers=auth(api.admin))).json()
    assert (await _patch(api, _at(sid), {"metadata": {}})).json()["metadata"] == session["metadata"]
    # A sibling whose id is a prefix is not touched.
    await api.store.create_session("alice", "a", {"title": "sibling"}, session_id="tickets")
    assert (await api.store.get_session("tickets")) is not None
    assert (await api.get("/v1/sessions/tickets")).json()["metadata"] == {"title": "sibling"}
    bad: Any
    for bad in (
        {},
        {"metadata": [1]},
        {"metadata": "x"},
        {"title": "no wrapper"},
        {"metadata": {}, "colour": "red"},
        {"metadata": {f"k{i}": i for i in range(65)}},
        [],
    ):
        assert_problem(await _patch(api, _at(sid), bad), 422, "validation-error")
    assert_problem(await _patch(api, "/v1/sessions/nope", {"metadata": {"a": 1}}), 404, "session-not-found")


async def test_window_reads_of_messages(api: Api) -> None:
    sid = "chats/with space"
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    await api.store.create_session("alice", "a", session_id=sid)
    await api.store.add_messages(
        sid,
        [
            NewMessage("system", "be brief"),
            NewMessage("user", "first question"),
            NewMessage("assistant", "first answer"),
            NewMessage("user", "weather?"),
            NewMessage("assistant", "", tool_calls=calls),
            NewMessage("tool", "sunny", tool_call_id="c1"),
            NewMessage("assistant", "It is sunny."),
        ],
    )
    path = _at(sid) + "/messages"

    async def contents(**params: Any) -> list[str]:
        response = await api.get(path, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["next_before"], body["next_after"]) == (None, None)  # a window is one answer
        return [m["content"] for m in body["items"]]

    last_turn = ["be brief", "weather?", "", "sunny", "It is sunny."]
    assert await contents(turns=1) == last_turn
    assert await contents(turns=1, pinned="false") == last_turn[1:]
    assert await contents(turns=5) == [m.content for m in await api.store.get_messages(sid)]
    # As the library answers: the window never starts between a call and its output.
    for tokens in (1, 5, 10, 1000):
        expected = [m.content for m in await api.store.get_messages(sid, window=Window(tokens=tokens))]
        assert await contents(tokens=tokens) == expected, tokens
        assert "sunny" not in expected or "" in expected  # the output comes with its call
    both = [m.content for m in await api.store.get_messages(sid, window=Window(turns=2, tokens=8, pinned=False))]
    assert await contents(turns=2, tokens=8, pinned="false") == both
    assert await contents(turns=1, before_seq=4) == ["be brief", "first question", "first answer"]
    assert await contents(turns=0) == ["be brief"]
    # Without turns or tokens, pinned changes nothing: the view, paged.
    assert len((await api.get(path, pinned="false")).json()["items"]) == 7
    # A window cannot page forwards; bad values are refused by the schema.
    assert_problem(await api.get(path, turns=1, after_seq=0), 400, "invalid-input")
    for bad in ({"turns": -1}, {"tokens": "many"}, {"turns": 2**62 + 1}, {"pinned": "maybe"}, {"turns": 1.5}):
        assert_problem(await api.get(path, **bad), 422, "validation-error")
    assert_problem(await api.get("/v1/sessions/nope/messages", turns=1), 404, "session-not-found")
    assert_problem(await api.get("/v1/sessions/nope/messages", turns=1, after_seq=0), 400, "invalid-input")
    assert_problem(await api.get(path, turns=1, branch="nope"), 404, "branch-not-found")


async def test_branches_are_forked_listed_and_deleted(api: Api) -> None:
    sid, name = "trees/a b", "what/if x"
    await api.store.create_session("alice", "a", session_id=sid)
    stored = await api.store.add_messages(sid, [NewMessage("user", f"m{i}") for i in range(3)])
    branches = _at(sid) + "/branches"
    forked = await api.post(branches, {"name": name, "at_seq": stored[1].seq})
    assert forked.status_code == 201, forked.text
    branch = forked.json()
    assert (branch["name"], branch["parent"], branch["fork_seq"], branch["messages"]) == (name, "main", 2, 0)
    assert datetime.fromisoformat(branch["created_at"]).tzinfo is not None
    await api.post(_at(sid) + "/messages", _batch("another ending") | {"branch": name})
    listed = (await api.get(branches)).json()["items"]
    assert [(b["name"], b["parent"], b["fork_seq"], b["messages"]) for b in listed] == [
        ("main", None, None, 3),
        (name, "main", 2, 1),
    ]
    read = (await api.get(_at(sid) + "/messages", branch=name)).json()["items"]
    assert [m["content"] for m in read] == ["m0", "m1", "another ending"]
    # By default a fork starts at the parent's latest message; at_seq 0 shares none of it.
    latest = (await api.post(branches, {"name": "latest"})).json()
    assert (latest["fork_seq"], latest["parent"]) == (3, "main")
    empty = (await api.post(branches, {"name": "blank", "parent": name, "at_seq": 0})).json()
    assert (empty["fork_seq"], empty["parent"]) == (0, name)
    whole = await api.post(branches, {"name": "whole", "at_seq": 2.0})  # an integer, to JSON
    assert (whole.status_code, whole.json()["fork_seq"]) == (201, 2)
    await api.delete(branches + "/whole")
    # Conflicts and unknowns.
    assert_problem(await api.post(branches, {"name": name}), 409, "branch-exists")
    assert_problem(await api.post(branches, {"name": "main"}), 409, "branch-exists")
    assert_problem(await api.post(branches, {"name": "x", "parent": "nope"}), 404, "branch-not-found")
    assert_problem(await api.post(branches, {"name": "x", "at_seq": 99}), 400, "invalid-input")
    assert_problem(await api.post("/v1/sessions/nope/branches", {"name": "x"}), 404, "session-not-found")
    assert_problem(await api.get("/v1/sessions/nope/branches"), 404, "session-not-found")
    bad: Any
    for bad in (
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "."},
        {"name": ".."},
        {"name": "x" * 256},
        {"name": "x", "at_seq": -1},
        {"name": "x", "at_seq": "2"},
        {"name": "x", "parent": ""},
        {"name": "x", "colour": "red"},
    ):
        assert_problem(await api.post(branches, bad), 422, "validation-error")
    # Deleting the main branch leaves the fork whole: it keeps the two messages it shares.
    deleted = await api.delete(branches + "/main")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"session_id": sid, "branch": "main", "messages": 0}  # latest shares all of main's
    assert [b["name"] for b in (await api.get(branches)).json()["items"]] == [name, "latest", "blank"]
    read = (await api.get(_at(sid) + "/messages", branch=name)).json()["items"]
    assert [m["content"] for m in read] == ["m0", "m1", "another ending"]
    gone = await api.client.delete(branches + "/" + quote(name, safe=""), headers=auth(api.admin))
    assert gone.json() == {"session_id": sid, "branch": name, "messages": 1}
    assert_problem(await api.delete(branches + "/" + quote(name, safe="")), 404, "branch-not-found")
    assert_problem(await api.delete(branches + "/what"), 404, "branch-not-found")  # "what/if x" was one segment
    assert_problem(await api.delete(branches + "/" + "x" * 256), 422, "validation-error")
    assert_problem(await api.delete("/v1/sessions/nope/branches/main"), 404, "session-not-found")


async def test_compaction_through_the_api(api: Api) -> None:
    sid = "support/kettle refund"
    await api.store.create_session("alice", "a", session_id=sid)
    stored = await api.store.add_messages(
        sid, [NewMessage("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(4)]
    )
    seqs = [m.seq for m in stored]
    path, messages = _at(sid) + "/compact", _at(sid) + "/messages"
    body = {
        "summary": [{"role": "user", "content": "Summary: a refund.", "id": "sum-1"}],
        "from_seq": seqs[0],
        "expect": seqs,
    }
    compacted = await api.post(path, body)
    assert compacted.status_code == 200, compacted.text
    items = compacted.json()["items"]
    assert [(m["content"], m["id"], m["covers"], m["session_id"]) for m in items] == [
        ("Summary: a refund.", "sum-1", [seqs[0], seqs[-1]], sid)
    ]
    assert [m["content"] for m in (await api.get(messages)).json()["items"]] == ["Summary: a refund."]
    assert len((await api.get(messages, raw="true")).json()["items"]) == 5  # the four, and the summary
    # A retry with the same ids returns the summary stored the first time.
    assert (await api.post(path, body)).json() == compacted.json()
    # The view changed since the summary was made, or nothing to replace: nothing written.
    stale = await api.post(path, {"summary": [{"role": "user", "content": "stale"}], "expect": seqs})
    assert (stale.status_code, stale.json()) == (200, {"items": None})
    later = await api.post(path, {"summary": [{"role": "user", "content": "late"}], "from_seq": 1000})
    assert later.json() == {"items": None}
    assert [m["content"] for m in (await api.get(messages)).json()["items"]] == ["Summary: a refund."]
    # A summary of nothing replaces the view with nothing.
    assert (await api.post(path, {"summary": []})).json() == {"items": []}
    assert (await api.get(messages)).json()["items"] == []
    # On a branch; unknowns, conflicts and bad input.
    await api.store.fork_session(sid, "side", at_seq=0)
    await api.post(messages, _batch("b0", "b1") | {"branch": "side"})
    on_side = await api.post(path, {"summary": [{"role": "assistant", "content": "side gist"}], "branch": "side"})
    assert [m["branch"] for m in on_side.json()["items"]] == ["side"]
    assert_problem(await api.post(path, {"summary": [], "branch": "nope"}), 404, "branch-not-found")
    assert_problem(await api.post("/v1/sessions/nope/compact", {"summary": []}), 404, "session-not-found")
    twice = [{"role": "user", "content": "1", "id": "x"}, {"role": "user", "content": "2", "id": "x"}]
    assert_problem(await api.post(path, {"summary": twice}), 409, "duplicate-message-id")
    bad: Any
    for bad in (
        {},
        {"summary": "gist"},
        {"summary": [{"role": "robot", "content": "x"}]},
        {"summary": [], "from_seq": -1},
        {"summary": [], "expect": [-1]},
        {"summary": [], "expect": "1"},
        {"summary": [], "prune_to": "3"},
        {"summary": [], "branch": ""},
        {"summary": [], "colour": "red"},
    ):
        assert_problem(await api.post(path, bad), 422, "validation-error")


async def test_another_users_session_answers_the_new_routes_as_one_that_does_not_exist(api: Api) -> None:
    _, bob_sid = await _two_users(api.store)
    await api.store.fork_session(bob_sid, "what-if")
    alice = await api.key(user="alice")

    async def answers(sid: str) -> list[tuple[int, str]]:
        path = _at(sid)
        responses = [
            await _patch(api, path, {"metadata": {"title": "mine now"}}, alice),
            await api.get(f"{path}/messages", alice, turns=1),
            await api.get(f"{path}/messages", alice, tokens=10, branch="what-if"),
            await api.get(f"{path}/branches", alice),
            await api.post(f"{path}/branches", {"name": "hers"}, alice),
            await api.post(f"{path}/branches", {"name": "what-if"}, alice),
            await api.post(f"{path}/branches", {"name": "x", "parent": "nope"}, alice),
            await api.delete(f"{path}/branches/what-if", alice),
            await api.delete(f"{path}/branches/main", alice),
            await api.post(f"{path}/compact", {"summary": [{"role": "user", "content": "gist"}]}, alice),
            await api.post(f"{path}/compact", {"summary": [], "branch": "what-if"}, alice),
        ]
        for response in responses:
            assert_problem(response, 404, "session-not-found")
        # Refused before any session is looked at: the same answer for every session.
        responses.append(await api.get(f"{path}/messages", alice, turns=1, after_seq=0))
        assert_problem(responses[-1], 400, "invalid-input")
        return [(r.status_code, r.text.replace(repr(sid), "<sid>").replace(sid, "<sid>")) for r in responses]

    assert await answers(bob_sid) == await answers("nobody-has-this-one")
    # Bob's session is untouched.
    bob = await api.store.get_session(bob_sid)
    assert bob is not None
    assert bob.metadata == {"title": "bob's"}
    assert [b.name for b in await api.store.list_branches(bob_sid)] == ["main", "what-if"]
    assert [m.content for m in await api.store.get_messages(bob_sid, raw=True)] == ["my refund for the red kettle"]
    # Her own session: the same routes work with her key.
    mine = await api.post("/v1/sessions", {"id": "hers/too", "agent_name": "a"}, alice)
    assert mine.status_code == 201
    assert (await _patch(api, _at("hers/too"), {"metadata": {"k": 1}}, alice)).json()["metadata"] == {"k": 1}
    assert (await api.post(_at("hers/too") + "/branches", {"name": "b"}, alice)).status_code == 201


async def test_every_id_names_its_own_session_through_the_new_routes(api: Api) -> None:
    for n, sid in enumerate(AWKWARD_IDS):
        await api.store.create_session("alice", "a", {"n": n}, session_id=sid)
        await api.store.add_messages(sid, [NewMessage("user", f"q{n}"), NewMessage("assistant", f"a{n}")])
    for n, sid in enumerate(AWKWARD_IDS):
        path = _at(sid)
        patched = await _patch(api, path, {"metadata": {"seen": sid}})
        assert (patched.status_code, patched.json()["id"], patched.json()["metadata"]) == (
            200,
            sid,
            {"n": n, "seen": sid},
        )
        window = (await api.get(f"{path}/messages", turns=1)).json()["items"]
        assert [(m["session_id"], m["content"]) for m in window] == [(sid, f"q{n}"), (sid, f"a{n}")]
        # A branch named like the session: a path segment of its own too.
        forked = await api.post(f"{path}/branches", {"name": sid, "at_seq": 1})
        assert forked.status_code == 201, (sid, forked.text)
        listed = (await api.get(f"{path}/branches")).json()["items"]
        assert [(b["name"], b["fork_seq"]) for b in listed] == [("main", None), (sid, 1)], sid
        compacted = await api.post(f"{path}/compact", {"summary": [{"role": "user", "content": f"gist{n}"}]})
        assert [(m["session_id"], m["covers"]) for m in compacted.json()["items"]] == [(sid, [1, 2])], sid
        deleted = await api.delete(f"{path}/branches/{quote(sid, safe='')}")
        assert deleted.json() == {"session_id": sid, "branch": sid, "messages": 0}, sid
    # Each session holds only what was done through its own path.
    for n, sid in enumerate(AWKWARD_IDS):
        session = await api.store.get_session(sid)
        assert session is not None
        assert session.metadata == {"n": n, "seen": sid}
        assert [b.name for b in await api.store.list_branches(sid)] == ["main"]
        assert [m.content for m in await api.store.get_messages(sid)] == [f"gist{n}"]


# -- the attacker at the door: stolen cookies, guessed keys, probes --------------------------------


class FakeClock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


async def _page(client: httpx.AsyncClient, cookie: str) -> int:
    """The status of the sessions page for a browser sending *cookie* (303: off to sign in)."""
    client.cookies.clear()
    return (await client.get("/ui/sessions", headers={"Cookie": f"convostore_session={cookie}"})).status_code


async def test_the_browser_keeps_a_signed_expiring_token_that_signing_out_ends(store: PostgresSessionStore) -> None:
    # The attacker holds a copy of a browser's cookie (or forges one), not the key.
    clock = FakeClock()
    async for api in _serve(store, clock=clock, session_secret="s" * 32):
        alice, alice_key = await create_key(store, user="alice")
        _, bob_key = await create_key(store, user="bob")
        cookie, csrf = await sign_in(api.client, alice)
        assert alice not in cookie
        # Not the key, nor its secret (the whole of it: the secret may hold "_" itself).
        assert alice.removeprefix("csk_").split("_", 1)[1] not in cookie
        assert await _page(api.client, cookie) == 200
        # Forged: another key's id, a later expiry, another server's signature.
        version, _key_id, count, expires, mac = cookie.split(".")
        for forged in (
            f"{version}.{bob_key.id}.{count}.{expires}.{mac}",
            f"{version}.{alice_key.id}.{count}.{int(expires) + 86400}.{mac}",
            f"{version}.{alice_key.id}.{int(count) + 1}.{expires}.{mac}",
            alice,
        ):
            assert await _page(api.client, forged) == 303
        async for other in _serve(store, clock=clock, session_secret="t" * 32):
            theirs, _ = await sign_in(other.client, alice)
        assert await _page(api.client, theirs) == 303
        # Signing out ends every sign-in of the key: the copy, and another browser's.
        copy, (second, _) = cookie, await sign_in(api.client, alice)
        assert await _page(api.client, second) == 200
        client = api.client
        client.cookies.clear()
        out = await client.post("/ui/logout", data={"csrf": csrf}, headers={"Cookie": f"convostore_session={cookie}"})
        assert out.status_code == 303
        assert "convostore_session" in set_cookies(out)  # and the browser forgets it
        assert await _page(api.client, copy) == 303
        assert await _page(api.client, second) == 303
        again, _ = await sign_in(api.client, alice)  # signing in again works
        assert await _page(api.client, again) == 200
        # A sign-in lasts 8 hours, then it is refused without asking the database.
        clock.now += 8 * 3600 + 1
        assert await _page(api.client, again) == 303


async def test_a_revoked_or_expired_key_ends_its_browser_sign_ins(store: PostgresSessionStore) -> None:
    clock = FakeClock()
    async for api in _serve(store, clock=clock, key_cache_ttl=0):
        token, key = await create_key(store)
        cookie, _ = await sign_in(api.client, token)
        assert await _page(api.client, cookie) == 200
        await revoke_key(store, key.id)
        assert await _page(api.client, cookie) == 303
        short, _ = await create_key(store, expires_in=60)
        cookie, _ = await sign_in(api.client, short)
        assert await _page(api.client, cookie) == 200
        clock.now += 61  # the token never outlives its key
        assert await _page(api.client, cookie) == 303


async def test_the_cookies_are_secure_except_on_loopback_hosts(store: PostgresSessionStore) -> None:
    admin, _ = await create_key(store)
    app = create_app(store)
    async with app.router.lifespan_context(app):
        for base, secure in (
            ("http://convostore.example", True),  # behind a TLS proxy elsewhere, the server sees http
            ("https://convostore.example", True),
            ("http://127.0.0.1:8080", False),
            ("http://localhost:8080", False),
            ("http://[::1]:8080", False),
        ):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                form = await client.get("/ui/login")
                login = set_cookies(form)["convostore_login"]
                nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
                assert nonce is not None
                client.cookies.clear()
                done = await client.post(
                    "/ui/login",
                    data={"nonce": nonce.group(1), "key": admin},
                    headers={"Cookie": f"convostore_login={cookie_value(form, 'convostore_login')}"},
                )
                assert done.status_code == 303, (base, done.text)
                session = set_cookies(done)["convostore_session"]
            for cookie in (login, session):
                attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
                assert ("secure" in attributes) is secure, (base, cookie)
                assert "httponly" in attributes
                assert "samesite=strict" in attributes


async def test_a_remembered_key_is_refused_once_it_expires(
    store: PostgresSessionStore, query_counter: QueryCounter
) -> None:
    clock = FakeClock()
    async for api in _serve(store, clock=clock, key_cache_ttl=7200):  # remembered past its expiry
        token, _ = await create_key(store, expires_in=3600)
        assert (await api.get("/v1/usage", token)).status_code == 200  # verified, remembered
        clock.now += 3599
        assert (await api.get("/v1/usage", token)).status_code == 200
        clock.now += 2
        before = query_counter.count
        assert_problem(await api.get("/v1/sessions", token), 401)
        assert query_counter.count == before  # refused from what it remembered


async def test_a_bogus_token_costs_one_round_trip_and_failures_are_rate_limited_per_address(
    store: PostgresSessionStore, query_counter: QueryCounter
) -> None:
    # The attacker sends well-formed tokens it made up, as fast as it likes, from one address.
    clock = FakeClock()
    async for api in _serve(store, clock=clock, failed_auth_burst=3, failed_auth_rate=0.5):
        assert (await api.get("/v1/sessions")).status_code == 200  # the admin's key, now remembered
        bogus = "csk_0123456789abcdef_" + "A" * 43
        before = query_counter.count
        assert_problem(await api.get("/v1/sessions", bogus), 401)
        assert query_counter.count == before + 1
        assert_problem(await api.get("/v1/sessions", bogus), 401)  # remembered as refused
        assert query_counter.count == before + 1
        assert_problem(await api.get("/v1/sessions", "csk_fedcba9876543210_" + "B" * 43), 401)
        # Three failures: the fourth attempt is refused before the application runs.
        before = query_counter.count
        limited = await api.get("/v1/sessions", "csk_00000000000000aa_" + "C" * 43)
        assert_problem(limited, 429, "too-many-requests")
        assert limited.headers["retry-after"] == "2"  # one token every 2 seconds
        assert query_counter.count == before
        form = await api.client.post("/ui/login", data={"key": "x", "nonce": "n"})
        assert form.status_code == 429  # the sign-in form too
        # A key the server verified recently still works from there: it costs nothing.
        assert (await api.get("/v1/sessions")).status_code == 200
        # Another address is not held back.
        other = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app, client=("10.0.0.2", 5000)), base_url=BASE)
        async with other:
            assert_problem(await other.get("/v1/sessions", headers=auth(bogus)), 401)
        # Time refills the bucket, one token at a time.
        clock.now += 2
        assert_problem(await api.get("/v1/sessions", "csk_00000000000000bb_" + "D" * 43), 401)
        assert_problem(await api.get("/v1/sessions", "csk_00000000000000cc_" + "E" * 43), 429)
        assert (await api.client.get("/healthz")).status_code == 200  # no key sent: never limited


async def test_readiness_is_asked_of_the_database_at_most_once_a_second(
    store: PostgresSessionStore, query_counter: QueryCounter
) -> None:
    clock = FakeClock()
    async for api in _serve(store, clock=clock):

        async def cost(probes: int, client: httpx.AsyncClient = api.client) -> int:
            before = query_counter.count
            answers = await asyncio.gather(*(client.get("/readyz") for _ in range(probes)))
            assert {r.status_code for r in answers} == {200}
            assert {r.json()["status"] for r in answers} == {"ready"}
            return query_counter.count - before

        first = await cost(10)
        assert first >= 1
        assert await cost(10) == 0  # the same second: the last answer
        clock.now += 1.5
        assert await cost(10) == first


def test_the_session_secret_comes_from_the_environment(
    store: PostgresSessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convostore import ConfigurationError
    from convostore.server.auth import session_secret

    monkeypatch.setenv("CONVOSTORE_SESSION_SECRET", "short")
    with pytest.raises(ConfigurationError):
        create_app(store)
    monkeypatch.setenv("CONVOSTORE_SESSION_SECRET", "x" * 32)
    assert session_secret() == b"x" * 32
    monkeypatch.delenv("CONVOSTORE_SESSION_SECRET")
    assert session_secret() != session_secret()  # random, per process
