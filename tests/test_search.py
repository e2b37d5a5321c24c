"""Full-text search: the expected hits in order, snippets, and never another scope's messages."""

from __future__ import annotations

import base64
import json

import asyncpg
import pytest
from typer.testing import CliRunner

from convostore import HIT_END, HIT_START, InvalidInput, NewMessage, PostgresSessionStore
from convostore.cli import app

CORPUS = {
    ("alice", "support"): [
        "I want a refund for my order; the refund policy says thirty days, so refund me.",
        "The refund status page shows nothing.",
        "Thanks, the parcel arrived.",
    ],
    ("alice", "sales"): ["Do you sell gift cards?", "Refunds on gift cards are not possible."],
    ("bob", "support"): ["Where is my refund? I asked for a refund twice."],
}


async def _seed(store: PostgresSessionStore) -> dict[tuple[str, str], str]:
    ids = {}
    for (user, agent), texts in CORPUS.items():
        session = await store.create_session(user, agent)
        await store.add_messages(session.id, [NewMessage("user", t) for t in texts])
        ids[(user, agent)] = session.id
    return ids


async def test_hits_come_ranked_with_marked_snippets(store: PostgresSessionStore) -> None:
    ids = await _seed(store)
    hits = await store.search("refund")
    texts = [(h.session_id, h.seq) for h in hits]
    # Three mentions, then two, then one each (newest first among equals).
    assert texts[0] == (ids[("alice", "support")], 1)
    assert texts[1] == (ids[("bob", "support")], 1)
    assert set(texts[2:]) == {(ids[("alice", "support")], 2), (ids[("alice", "sales")], 2)}
    assert hits[0].rank > hits[1].rank > hits[2].rank
    assert f"{HIT_START}refund{HIT_END}" in hits[0].snippet
    assert hits[0].marked("<<", ">>").count("<<refund>>") == 3
    assert {h.role for h in hits} == {"user"}
    # Web search syntax: a phrase, an exclusion, or.
    assert [h.seq for h in await store.search('"refund policy"')] == [1]
    assert {(h.session_id, h.seq) for h in await store.search("refund -status -twice -gift")} == {
        (ids[("alice", "support")], 1)
    }
    assert len(await store.search("parcel or cards")) == 3
    assert await store.search("nothing-here-at-all") == []
    # Narrowed to a session, an agent; paged.
    assert {h.session_id for h in await store.search("refund", agent_name="sales")} == {ids[("alice", "sales")]}
    assert len(await store.search("refund", session_id=ids[("alice", "support")])) == 2
    assert await store.search("refund", limit=2, offset=2) == hits[2:4]


async def test_a_search_never_reaches_another_scope(store: PostgresSessionStore) -> None:
    await _seed(store)
    other = store.scoped(tenant="other")
    await other.add_messages("theirs", [NewMessage("user", "refund refund refund")], user_id="alice")
    assert {h.user_id for h in await store.scoped(user="bob").search("refund")} == {"bob"}
    assert {h.user_id for h in await store.search("refund", user_id="alice")} == {"alice"}
    assert {h.tenant for h in await store.search("refund")} == {"default"}
    assert [h.session_id for h in await other.search("refund")] == ["theirs"]
    everywhere = await store.search("refund", all_tenants=True)
    assert {h.tenant for h in everywhere} == {"default", "other"}


async def test_sealed_messages_are_not_searchable(database_url: str, schema_name: str) -> None:
    key = base64.b64encode(b"s" * 32).decode()
    async with PostgresSessionStore(database_url, schema=schema_name, encryption_keys=[key]) as store:
        await store.add_messages("sealed", [NewMessage("user", "my refund is secret")], user_id="u")
        assert await store.search("refund") == []


@pytest.mark.parametrize("query", ["", "   ", "x" * 1001, "\ud800"])
async def test_a_bad_query_is_refused(store: PostgresSessionStore, query: str) -> None:
    with pytest.raises(InvalidInput):
        await store.search(query)


async def test_odd_queries_are_words_not_syntax(store: PostgresSessionStore) -> None:
    await _seed(store)
    for query in ("refund & | ! (", "'; DROP TABLE x; --", '"unclosed', "-", "or or or", "<script>"):
        await store.search(query)  # never an error from the database


def test_the_cli_searches(database_url: str, schema_name: str) -> None:
    import asyncio

    async def seed() -> None:
        async with PostgresSessionStore(database_url, schema=schema_name) as store:
            await _seed(store)

    asyncio.run(seed())
    runner, env = CliRunner(), {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}
    found = runner.invoke(app, ["search", "refund policy", "--json"], env=env)
    assert found.exit_code == 0, found.output
    [hit] = json.loads(found.output)
    assert "[refund] [policy]" in hit["snippet"]
    shown = runner.invoke(app, ["search", "refund", "--user", "bob"], env=env)
    assert "twice" in shown.output
    none = runner.invoke(app, ["search", "zebra"], env=env)
    assert none.exit_code == 1


async def _plan(store: PostgresSessionStore, database_url: str) -> str:
    """The plan of the search statement for one word, sequential scans discouraged (a tiny
    table would be scanned anyway), so that the index shows whenever it can serve."""
    conn = await asyncpg.connect(database_url)
    try:
        args = (store.tenant, None, None, None, "refund", 20, 0, 30, HIT_START, HIT_END)
        async with conn.transaction():
            if store._scope.runner.distributed:
                # The setting must reach the shards' plans, and every shard's plan is shown (one
                # of them alone may be of an empty shard).
                await conn.execute(
                    "SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL citus.explain_all_tasks = on"
                )
            await conn.execute("SET LOCAL enable_seqscan = off")
            rows = await conn.fetch("EXPLAIN " + store._scope.queries.search, *args)
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows)


async def test_the_search_index_is_opt_in_and_used_once_built(store: PostgresSessionStore, database_url: str) -> None:
    ids = await _seed(store)
    filler = await store.create_session("carol", "support")
    await store.add_messages(filler.id, [NewMessage("user", f"filler message {i}") for i in range(500)])
    await store.pool.execute(f'ANALYZE "{store.schema}".conversation_messages')
    without = await store.search("refund")
    assert not await store.search_index()
    assert "idx_messages_search" not in await _plan(store, database_url)
    assert await store.create_search_index() is True
    assert await store.create_search_index() is False
    assert await store.search_index()
    assert "idx_messages_search" in await _plan(store, database_url)
    assert await store.search("refund") == without  # the same hits, read through the index
    await store.add_message(ids[("bob", "support")], "user", "a zebra wants a refund")
    assert [h.seq for h in await store.search("zebra")] == [2]
    assert await store.drop_search_index() is True
    assert await store.drop_search_index() is False
    assert not await store.search_index()
    assert [h.seq for h in await store.search("zebra")] == [2]


async def test_an_interrupted_build_is_replaced(store: PostgresSessionStore) -> None:
    await _seed(store)
    # What a failed CREATE INDEX CONCURRENTLY leaves: an index marked invalid.
    await store.pool.execute(store._scope.queries.search_index_create)
    await store.pool.execute(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = $1::regclass",
        f'"{store.schema}".idx_messages_search',
    )
    assert not await store.search_index()
    assert await store.create_search_index() is True
    assert await store.search_index()


def test_the_cli_builds_and_drops_the_index(database_url: str, schema_name: str) -> None:
    import asyncio

    async def seed() -> None:
        async with PostgresSessionStore(database_url, schema=schema_name) as store:
            await _seed(store)

    asyncio.run(seed())
    runner, env = CliRunner(), {"DATABASE_URL": database_url, "CONVOSTORE_SCHEMA": schema_name}
    assert runner.invoke(app, ["search-index", "status"], env=env).exit_code == 3
    built = runner.invoke(app, ["search-index", "create"], env=env)
    assert built.exit_code == 0, built.output
    assert "built the search index" in built.output
    assert runner.invoke(app, ["search-index", "status"], env=env).exit_code == 0
    assert "already there" in runner.invoke(app, ["search-index", "create"], env=env).output
    assert runner.invoke(app, ["search", "refund policy"], env=env).exit_code == 0
    assert "dropped" in runner.invoke(app, ["search-index", "drop"], env=env).output
    assert runner.invoke(app, ["search-index", "status"], env=env).exit_code == 3


@pytest.mark.parametrize("indexed", [False, True], ids=["without the index", "with the index"])
async def test_a_word_right_after_or_before_a_nul_is_found(store: PostgresSessionStore, indexed: bool) -> None:
    if indexed:
        assert await store.create_search_index() is True
    session = await store.create_session("u", "a")
    text = "abc\x00secretword and tail\x00end, 100%\x00percent"
    await store.add_message(session.id, "tool", text, tool_call_id="c1")
    for word in ("secretword", "abc", "tail", "end", "percent"):
        hits = await store.search(word)
        assert [(h.session_id, h.seq) for h in hits] == [(session.id, 1)], word
    assert [m.content for m in await store.get_messages(session.id)] == [text]


async def test_rows_escaped_the_earlier_way_still_read_back(store: PostgresSessionStore) -> None:
    session = await store.create_session("u", "a")
    await store.add_message(session.id, "user", "placeholder")
    await store.pool.execute(
        f'UPDATE "{store.schema}".conversation_messages SET content = $1 WHERE session_id = $2',
        "\ue000a%00b%2500",
        session.id,
    )
    assert [m.content for m in await store.get_messages(session.id)] == ["a\x00b%00"]
