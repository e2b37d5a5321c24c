"""The systems under test, each behind the same small async interface, each in its own schema.

* ``floor``: raw asyncpg on a minimal table, one statement per operation.
* ``convostore``: the store API; ``convostore-sdk``: its Agents SDK ``PostgresSession``.
* ``convostore-rls``: the store connecting as a runtime role made by
  ``convostore.roles.create_roles``, so that every statement runs under row-level security.
* ``convostore-sealed``: the store with an encryption key (messages sealed with AES-GCM).
* ``sqlalchemy-sdk``: the Agents SDK's ``SQLAlchemySession`` (asyncpg driver).
* ``langchain``: langchain-postgres' ``PostgresChatMessageHistory`` (psycopg 3, pooled).
* ``seed``: the seed document's query pattern, written here as a reference: two statements
  per append, ``ORDER BY created_at``, reads without LIMIT, an N+1 listing.

Bulk set-up (filling a session with 10k messages, creating 10k old sessions) is done with
SQL on each system's own tables, so that only the measured operations go through the
systems' APIs.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from convostore import NewMessage, PostgresSessionStore
from convostore._validate import Row

# The master key of ``convostore-sealed`` (a fixed, benchmark-only key).
BENCH_KEY = base64.b64encode(b"convostore bench key, 32 bytes!!").decode()


class System:
    """Base class: every operation a workload may call. ``None`` from a capability method
    means the system cannot do it (shown as n/a)."""

    name = "?"
    supports_recent = True
    messages_table = "?"  # where the system keeps messages (for growth measurements)

    def __init__(self, url: str, schema: str, pool_size: int) -> None:
        self.url = url
        self.schema = schema
        self.pool_size = pool_size
        self.admin: asyncpg.Pool

    async def start(self) -> None:
        self.admin = await asyncpg.create_pool(self.url, min_size=1, max_size=2)
        await self.admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        await self.admin.execute(f'CREATE SCHEMA "{self.schema}"')
        await self.open()

    async def stop(self) -> None:
        await self.close()
        await self.admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        await self.admin.close()

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def new_session(self, user: str) -> str:
        raise NotImplementedError

    async def append(self, sid: str, text: str) -> None:
        raise NotImplementedError

    async def append_batch(self, sid: str, texts: list[str]) -> None:
        raise NotImplementedError

    async def last_n(self, sid: str, n: int) -> list[Any]:
        raise NotImplementedError

    async def whole(self, sid: str) -> list[Any]:
        raise NotImplementedError

    async def recent_with_messages(self, user: str, n: int) -> list[Any]:
        raise NotImplementedError

    async def delete_idle(self, count: int) -> int:
        """Delete the *count* sessions made idle by :meth:`fill_old_sessions`."""
        raise NotImplementedError

    async def fill(self, sid: str, n: int) -> None:
        """Give session *sid* *n* more messages (bulk SQL)."""
        raise NotImplementedError

    async def fill_old_sessions(self, count: int, user: str) -> None:
        """Create *count* sessions of 2 messages each, idle for 40 days (bulk SQL)."""
        raise NotImplementedError

    async def window(self, sid: str, turns: int | None, tokens: int | None) -> list[Any] | None:
        """A turn or token window of the session's history (``None``: not supported)."""
        return None

    async def tokens_of_last(self, sid: str, n: int) -> int:
        """The tokens of the last *n* messages, as a budget window counts them."""
        raise NotImplementedError(self.name)

    async def table_rows(self) -> int:
        return int(await self.admin.fetchval(f'SELECT count(*) FROM "{self.schema}"."{self.messages_table}"'))


def _item(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


class Floor(System):
    name = "floor"
    messages_table = "messages"

    async def open(self) -> None:
        s = self.schema
        await self.admin.execute(
            f"""
            CREATE TABLE "{s}".sessions (id text PRIMARY KEY, user_id text NOT NULL,
                                         updated_at timestamptz NOT NULL DEFAULT now());
            CREATE TABLE "{s}".messages (id bigserial,
                session_id text NOT NULL REFERENCES "{s}".sessions (id) ON DELETE CASCADE,
                role text NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (session_id, id));
            CREATE INDEX ON "{s}".sessions (user_id, updated_at DESC);
            CREATE INDEX ON "{s}".sessions (updated_at);
            """
        )
        self.pool = await asyncpg.create_pool(self.url, min_size=self.pool_size, max_size=self.pool_size)
        self.q_append = f'INSERT INTO "{s}".messages (session_id, role, content) VALUES ($1, $2, $3)'
        self.q_batch = f'INSERT INTO "{s}".messages (session_id, role, content) SELECT $1, $2, unnest($3::text[])'
        # A minimal message as read back: id, role, content, created_at.
        self.q_last = (
            f'SELECT id, role, content, created_at FROM (SELECT id, role, content, created_at FROM "{s}".messages '
            "WHERE session_id = $1 ORDER BY id DESC LIMIT $2) t ORDER BY id"
        )
        self.q_whole = f'SELECT id, role, content, created_at FROM "{s}".messages WHERE session_id = $1 ORDER BY id'
        self.q_recent = (
            f"SELECT p.id, p.user_id, p.updated_at, m.id, m.role, m.content, m.created_at FROM (SELECT id, user_id, "
            f'updated_at FROM "{s}".sessions WHERE user_id = $1 ORDER BY updated_at DESC LIMIT $2) p '
            f'JOIN "{s}".messages m ON m.session_id = p.id ORDER BY p.updated_at DESC, m.id'
        )

    async def close(self) -> None:
        await self.pool.close()

    async def new_session(self, user: str) -> str:
        sid = str(uuid.uuid4())
        await self.pool.execute(f'INSERT INTO "{self.schema}".sessions (id, user_id) VALUES ($1, $2)', sid, user)
        return sid

    async def append(self, sid: str, text: str) -> None:
        await self.pool.execute(self.q_append, sid, "user", text)

    async def append_batch(self, sid: str, texts: list[str]) -> None:
        await self.pool.execute(self.q_batch, sid, "user", texts)

    async def last_n(self, sid: str, n: int) -> list[Any]:
        return await self.pool.fetch(self.q_last, sid, n)

    async def whole(self, sid: str) -> list[Any]:
        return await self.pool.fetch(self.q_whole, sid)

    async def recent_with_messages(self, user: str, n: int) -> list[Any]:
        return await self.pool.fetch(self.q_recent, user, n)

    async def delete_idle(self, count: int) -> int:
        status = await self.pool.execute(
            f"DELETE FROM \"{self.schema}\".sessions WHERE updated_at < now() - interval '30 days'"
        )
        return int(status.split()[-1])

    async def fill(self, sid: str, n: int) -> None:
        await self.admin.execute(
            f'INSERT INTO "{self.schema}".messages (session_id, role, content) '
            "SELECT $1, 'user', 'message number ' || g FROM generate_series(1, $2) g",
            sid,
            n,
        )

    async def fill_old_sessions(self, count: int, user: str) -> None:
        s = self.schema
        await self.admin.execute(
            f"INSERT INTO \"{s}\".sessions (id, user_id, updated_at) SELECT 'old-' || g, $1, "
            "now() - interval '40 days' FROM generate_series(1, $2) g",
            user,
            count,
        )
        # Statistics for the new sessions before the messages' foreign key checks plan
        # their lookup (a plan made when the table was nearly empty scans it whole).
        await self.admin.execute(f'ANALYZE "{s}".sessions')
        await self.admin.execute(
            f"INSERT INTO \"{s}\".messages (session_id, role, content) SELECT 'old-' || g, 'user', 'hello' "
            "FROM generate_series(1, $1) g, generate_series(1, 2)",
            count,
        )


class Convostore(System):
    name = "convostore"
    messages_table = "conversation_messages"

    def _options(self) -> dict[str, Any]:
        """Extra options of the store (the variants below add theirs)."""
        return {}

    async def open(self) -> None:
        self.store = PostgresSessionStore(
            self.url, schema=self.schema, min_size=self.pool_size, max_size=self.pool_size, **self._options()
        )
        await self.store.connect()

    async def close(self) -> None:
        await self.store.close()

    async def new_session(self, user: str) -> str:
        return (await self.store.create_session(user, "bench")).id

    async def append(self, sid: str, text: str) -> None:
        await self.store.add_message(sid, "user", text)

    async def append_batch(self, sid: str, texts: list[str]) -> None:
        await self.store.add_messages(sid, [NewMessage("user", t) for t in texts])

    async def last_n(self, sid: str, n: int) -> list[Any]:
        return await self.store.get_messages(sid, limit=n)

    async def whole(self, sid: str) -> list[Any]:
        return await self.store.get_messages(sid)

    async def recent_with_messages(self, user: str, n: int) -> list[Any]:
        return await self.store.get_user_sessions(user, n)

    async def delete_idle(self, count: int) -> int:
        from datetime import timedelta

        return await self.store.delete_idle_sessions(timedelta(days=30))

    async def window(self, sid: str, turns: int | None, tokens: int | None) -> list[Any] | None:
        from convostore import Window

        return await self.store.get_messages(sid, window=Window(turns=turns, tokens=tokens))

    async def tokens_of_last(self, sid: str, n: int) -> int:
        """The tokens the last *n* messages count for a budget window (as the store counts them)."""
        return int(
            await self.admin.fetchval(
                "SELECT sum(coalesce(tokens, octet_length(coalesce(raw::text, content)) / 4 + 1)) "
                f'FROM (SELECT * FROM "{self.schema}".conversation_messages '
                "WHERE session_id = $1 ORDER BY seq DESC LIMIT $2) x",
                sid,
                n,
            )
        )

    async def fill(self, sid: str, n: int, raw: bool = False) -> None:
        s = self.schema
        raw_sql = "jsonb_build_object('role', 'user', 'content', 'message number ' || g)" if raw else "NULL"
        await self.admin.execute(
            f"""
            WITH bump AS (UPDATE "{s}".agent_sessions SET last_seq = last_seq + $2 WHERE tenant_id = $3 AND id = $1
                          RETURNING last_seq - $2 AS base, user_id)
            INSERT INTO "{s}".conversation_messages (tenant_id, session_id, seq, id, user_id, role, content, raw)
            SELECT $3, $1, bump.base + g, gen_random_uuid()::text, bump.user_id, 'user', 'message number ' || g,
                   {raw_sql}
            FROM bump, generate_series(1, $2) g
            """,
            sid,
            n,
            self.store.tenant,
        )

    async def fill_old_sessions(self, count: int, user: str) -> None:
        s = self.schema
        await self.admin.execute(
            f'INSERT INTO "{s}".agent_sessions (tenant_id, id, user_id, agent_name, updated_at, last_seq) '
            "SELECT $3, 'old-' || g, $1, 'bench', now() - interval '40 days', 2 FROM generate_series(1, $2) g",
            user,
            count,
            self.store.tenant,
        )
        await self.admin.execute(f'ANALYZE "{s}".agent_sessions')  # see Floor.fill_old_sessions
        await self.admin.execute(
            f'INSERT INTO "{s}".conversation_messages (tenant_id, session_id, seq, id, user_id, role, content) '
            "SELECT $3, 'old-' || g, k, 'm' || k, $2, 'user', 'hello' "
            "FROM generate_series(1, $1) g, generate_series(1, 2) k",
            count,
            user,
            self.store.tenant,
        )


def with_user(url: str, user: str) -> str:
    """*url* connecting as *user* (no password: the server's trust or peer authentication)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


class ConvostoreRLS(Convostore):
    """The store connecting as the runtime role of ``convostore.roles.create_roles``: every
    statement runs under row-level security. The roles are dropped afterwards."""

    name = "convostore-rls"

    @property
    def roles(self) -> tuple[str, str]:
        return f"{self.schema}_owner", f"{self.schema}_app"

    async def _drop_roles(self) -> None:
        for role in reversed(self.roles):
            if await self.admin.fetchval("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role):
                await self.admin.execute(f'DROP OWNED BY "{role}"')
                await self.admin.execute(f'DROP ROLE "{role}"')

    async def open(self) -> None:
        from convostore.roles import create_roles

        await self._drop_roles()  # left behind by an interrupted run
        owner, runtime = self.roles
        async with PostgresSessionStore(self.url, schema=self.schema, min_size=1, max_size=1) as setup:
            await create_roles(setup, owner=owner, runtime=runtime)
        self.store = PostgresSessionStore(
            with_user(self.url, runtime),
            schema=self.schema,
            apply_migrations=False,
            min_size=self.pool_size,
            max_size=self.pool_size,
        )
        await self.store.connect()
        if not self.store._scope.runner.row_security:
            raise AssertionError("the runtime role is not subject to row-level security")

    async def stop(self) -> None:
        await self.close()
        await self.admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        await self._drop_roles()
        await self.admin.close()


class ConvostoreSealed(Convostore):
    """The store with an encryption key: what messages say is sealed (AES-GCM). Bulk fills
    seal their rows too (in Python, with the store's key), so that reads open sealed rows."""

    name = "convostore-sealed"

    def _options(self) -> dict[str, Any]:
        return {"encryption_keys": [BENCH_KEY]}

    async def fill(self, sid: str, n: int, raw: bool = False) -> None:
        s, tenant = self.schema, self.store.tenant
        for start in range(0, n, 50_000):
            count = min(50_000, n - start)
            rows = [
                self.store._scope.seal_row(
                    sid,
                    Row(
                        str(uuid.uuid4()), "user", f"message number {start + g}", None, None, None, None, None, 0, None
                    ),
                )
                for g in range(1, count + 1)
            ]
            await self.admin.execute(
                f"""
                WITH bump AS (UPDATE "{s}".agent_sessions SET last_seq = last_seq + $2
                              WHERE tenant_id = $3 AND id = $1 RETURNING last_seq - $2 AS base, user_id)
                INSERT INTO "{s}".conversation_messages
                    (tenant_id, session_id, seq, id, user_id, role, content, key_id, sealed)
                SELECT $3, $1, bump.base + r.ord, r.id, bump.user_id, 'user', r.content, r.key_id, r.sealed
                FROM bump, unnest($4::text[], $5::text[], $6::text[], $7::bytea[])
                           WITH ORDINALITY AS r(id, content, key_id, sealed, ord)
                """,
                sid,
                count,
                tenant,
                [r[0] for r in rows],
                [r[2] for r in rows],
                [r[6] for r in rows],
                [r[7] for r in rows],
            )


class ConvostoreTokens(Convostore):
    """The store counting each message's tokens as it is written (the estimate of
    :func:`convostore.windows.estimate_tokens`, pure Python; tiktoken's files are not
    fetched here), for budget windows."""

    name = "convostore-tokens"

    def _options(self) -> dict[str, Any]:
        from convostore.windows import estimate_tokens

        return {"token_counter": estimate_tokens}


class ConvostoreSearch(Convostore):
    """The store with the opt-in full-text index built: every append indexes what it writes."""

    name = "convostore-search"

    async def open(self) -> None:
        await super().open()
        await self.store.create_search_index()


class ConvostoreSDK(Convostore):
    name = "convostore-sdk"
    supports_recent = False

    def _session(self, sid: str) -> Any:
        from convostore.openai_agents import PostgresSession

        return PostgresSession(sid, store=self.store, user_id="bench-user", agent_name="bench")

    async def new_session(self, user: str) -> str:
        # The SDK session creates its row on first write; create it now so that bulk fills
        # and appends find it, with the owner the session objects use.
        return (await self.store.create_session("bench-user", "bench")).id

    async def append(self, sid: str, text: str) -> None:
        await self._session(sid).add_items([_item(text)])

    async def append_batch(self, sid: str, texts: list[str]) -> None:
        await self._session(sid).add_items([_item(t) for t in texts])

    async def last_n(self, sid: str, n: int) -> list[Any]:
        return list(await self._session(sid).get_items(limit=n))

    async def whole(self, sid: str) -> list[Any]:
        return list(await self._session(sid).get_items())

    async def recent_with_messages(self, user: str, n: int) -> list[Any]:
        raise NotImplementedError

    async def fill(self, sid: str, n: int, raw: bool = True) -> None:
        await super().fill(sid, n, raw=True)


class SQLAlchemySDK(System):
    name = "sqlalchemy-sdk"
    supports_recent = False
    messages_table = "agent_messages"

    async def open(self) -> None:
        from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
        from sqlalchemy.ext.asyncio import create_async_engine

        url = self.url.replace("postgresql://", "postgresql+asyncpg://", 1).replace(
            "postgres://", "postgresql+asyncpg://", 1
        )
        self.engine = create_async_engine(
            url,
            pool_size=self.pool_size,
            max_overflow=0,
            connect_args={"server_settings": {"search_path": self.schema}},
        )
        self.cls = SQLAlchemySession
        await SQLAlchemySession("init", engine=self.engine, create_tables=True).get_items()

    async def close(self) -> None:
        await self.engine.dispose()

    def _session(self, sid: str) -> Any:
        return self.cls(sid, engine=self.engine)

    async def new_session(self, user: str) -> str:
        sid = str(uuid.uuid4())
        await self.admin.execute(f'INSERT INTO "{self.schema}".agent_sessions (session_id) VALUES ($1)', sid)
        return sid

    async def append(self, sid: str, text: str) -> None:
        await self._session(sid).add_items([_item(text)])

    async def append_batch(self, sid: str, texts: list[str]) -> None:
        await self._session(sid).add_items([_item(t) for t in texts])

    async def last_n(self, sid: str, n: int) -> list[Any]:
        return list(await self._session(sid).get_items(limit=n))

    async def whole(self, sid: str) -> list[Any]:
        return list(await self._session(sid).get_items())

    async def delete_idle(self, count: int) -> int:
        # The SDK has no cleanup: a user clears each idle session.
        rows = await self.admin.fetch(
            f"SELECT session_id FROM \"{self.schema}\".agent_sessions WHERE updated_at < now() - interval '30 days'"
        )
        for row in rows:
            await self._session(row["session_id"]).clear_session()
        return len(rows)

    async def fill(self, sid: str, n: int) -> None:
        await self.admin.execute(
            f'INSERT INTO "{self.schema}".agent_messages (session_id, message_data) '
            "SELECT $1, json_build_object('role', 'user', 'content', 'message number ' || g)::text "
            "FROM generate_series(1, $2) g",
            sid,
            n,
        )

    async def fill_old_sessions(self, count: int, user: str) -> None:
        s = self.schema
        await self.admin.execute(
            f'INSERT INTO "{s}".agent_sessions (session_id, updated_at) '
            "SELECT 'old-' || g, now() - interval '40 days' FROM generate_series(1, $1) g",
            count,
        )
        await self.admin.execute(
            f'INSERT INTO "{s}".agent_messages (session_id, message_data) '
            'SELECT \'old-\' || g, \'{"role":"user","content":"hello"}\' '
            "FROM generate_series(1, $1) g, generate_series(1, 2)",
            count,
        )


class Langchain(System):
    name = "langchain"
    supports_recent = False
    table = messages_table = "chat_history"

    async def open(self) -> None:
        from langchain_postgres import PostgresChatMessageHistory
        from psycopg_pool import AsyncConnectionPool

        self.cls = PostgresChatMessageHistory
        self.pg = AsyncConnectionPool(
            self.url,  # libpq reads the same URLs, including ?host=/socket/dir
            min_size=self.pool_size,
            max_size=self.pool_size,
            kwargs={"options": f"-c search_path={self.schema}", "autocommit": False},
            open=False,
        )
        await self.pg.open()
        async with self.pg.connection() as conn:
            await PostgresChatMessageHistory.acreate_tables(conn, self.table)

    async def close(self) -> None:
        await self.pg.close()

    async def new_session(self, user: str) -> str:
        return str(uuid.uuid4())

    async def append(self, sid: str, text: str) -> None:
        from langchain_core.messages import HumanMessage

        async with self.pg.connection() as conn:
            await self.cls(self.table, sid, async_connection=conn).aadd_messages([HumanMessage(text)])

    async def append_batch(self, sid: str, texts: list[str]) -> None:
        from langchain_core.messages import HumanMessage

        async with self.pg.connection() as conn:
            await self.cls(self.table, sid, async_connection=conn).aadd_messages([HumanMessage(t) for t in texts])

    async def last_n(self, sid: str, n: int) -> list[Any]:
        # Its API has no limit: the whole history is read to show the last n.
        return (await self.whole(sid))[-n:]

    async def whole(self, sid: str) -> list[Any]:
        async with self.pg.connection() as conn:
            return list(await self.cls(self.table, sid, async_connection=conn).aget_messages())

    async def delete_idle(self, count: int) -> int:
        # No notion of sessions or idleness: a user clears each known idle history.
        async with self.pg.connection() as conn:
            for i in range(count):
                await self.cls(self.table, str(uuid.UUID(int=i + 1)), async_connection=conn).aclear()
        return count

    async def fill(self, sid: str, n: int) -> None:
        await self.admin.execute(
            f'INSERT INTO "{self.schema}".{self.table} (session_id, message) '
            "SELECT $1::uuid, jsonb_build_object('type', 'human', 'data', jsonb_build_object("
            "'content', 'message number ' || g, 'type', 'human', 'additional_kwargs', '{}'::jsonb, "
            "'response_metadata', '{}'::jsonb)) FROM generate_series(1, $2) g",
            sid,
            n,
        )

    async def fill_old_sessions(self, count: int, user: str) -> None:
        await self.admin.execute(
            f'INSERT INTO "{self.schema}".{self.table} (session_id, message, created_at) '
            'SELECT lpad(to_hex(g), 32, \'0\')::uuid, \'{"type": "human", "data": {"content": "hello"}}\', '
            "now() - interval '40 days' FROM generate_series(1, $1) g, generate_series(1, 2)",
            count,
        )


class ConvostoreLangchain(Convostore):
    """convostore's LangChain adapter (PostgresChatMessageHistory) on the same store, beside
    langchain-postgres's PostgresChatMessageHistory."""

    name = "convostore-langchain"
    supports_recent = False

    async def new_session(self, user: str) -> str:
        return (await self.store.create_session("bench", "bench")).id  # the histories' user

    def _history(self, sid: str, limit: int | None = None) -> Any:
        from convostore.langchain import PostgresChatMessageHistory

        return PostgresChatMessageHistory(sid, store=self.store, user_id="bench", agent_name="bench", limit=limit)

    async def append(self, sid: str, text: str) -> None:
        from langchain_core.messages import HumanMessage

        await self._history(sid).aadd_messages([HumanMessage(text)])

    async def append_batch(self, sid: str, texts: list[str]) -> None:
        from langchain_core.messages import HumanMessage

        await self._history(sid).aadd_messages([HumanMessage(t) for t in texts])

    async def last_n(self, sid: str, n: int) -> list[Any]:
        return list(await self._history(sid, limit=n).aget_messages())

    async def whole(self, sid: str) -> list[Any]:
        return list(await self._history(sid).aget_messages())

    async def window(self, sid: str, turns: int | None, tokens: int | None) -> list[Any] | None:
        return None


class Seed(System):
    """The seed document's query pattern (reference implementation written for the bench)."""

    name = "seed"
    messages_table = "conversation_messages"

    async def open(self) -> None:
        s = self.schema
        await self.admin.execute(
            f"""
            CREATE TABLE "{s}".agent_sessions (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id varchar(255) NOT NULL,
                agent_name varchar(255) NOT NULL, created_at timestamptz DEFAULT now(),
                updated_at timestamptz DEFAULT now(), metadata jsonb DEFAULT '{{}}');
            CREATE TABLE "{s}".conversation_messages (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                session_id uuid REFERENCES "{s}".agent_sessions (id) ON DELETE CASCADE,
                role varchar(50) NOT NULL, content text NOT NULL, tool_calls jsonb,
                tool_call_id varchar(255), created_at timestamptz DEFAULT now());
            CREATE INDEX ON "{s}".agent_sessions (user_id);
            CREATE INDEX ON "{s}".conversation_messages (session_id);
            CREATE INDEX ON "{s}".conversation_messages (created_at);
            """
        )
        self.pool = await asyncpg.create_pool(self.url, min_size=self.pool_size, max_size=self.pool_size)

    async def close(self) -> None:
        await self.pool.close()

    async def new_session(self, user: str) -> str:
        sid = uuid.uuid4()
        await self.pool.execute(
            f'INSERT INTO "{self.schema}".agent_sessions (id, user_id, agent_name, metadata) VALUES ($1, $2, $3, $4)',
            sid,
            user,
            "bench",
            json.dumps({}),
        )
        return str(sid)

    async def append(self, sid: str, text: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                f'INSERT INTO "{self.schema}".conversation_messages (session_id, role, content) VALUES ($1, $2, $3)',
                uuid.UUID(sid),
                "user",
                text,
            )
            await conn.execute(
                f'UPDATE "{self.schema}".agent_sessions SET updated_at = NOW() WHERE id = $1', uuid.UUID(sid)
            )

    async def append_batch(self, sid: str, texts: list[str]) -> None:
        for text in texts:  # the seed has no batch append
            await self.append(sid, text)

    async def _session(self, conn: Any, sid: Any) -> list[Any]:
        row = await conn.fetchrow(f'SELECT * FROM "{self.schema}".agent_sessions WHERE id = $1', sid)
        if row is None:
            return []
        return list(
            await conn.fetch(
                f'SELECT * FROM "{self.schema}".conversation_messages WHERE session_id = $1 ORDER BY created_at ASC',
                sid,
            )
        )

    async def last_n(self, sid: str, n: int) -> list[Any]:
        return (await self.whole(sid))[-n:]  # the seed reads the whole session

    async def whole(self, sid: str) -> list[Any]:
        async with self.pool.acquire() as conn:
            return await self._session(conn, uuid.UUID(sid))

    async def recent_with_messages(self, user: str, n: int) -> list[Any]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f'SELECT * FROM "{self.schema}".agent_sessions WHERE user_id = $1 ORDER BY updated_at DESC LIMIT $2',
                user,
                n,
            )
        out = []
        for row in rows:  # N+1: one get_session per listed session
            async with self.pool.acquire() as conn:
                out.append(await self._session(conn, row["id"]))
        return out

    async def delete_idle(self, count: int) -> int:
        status = await self.pool.execute(
            f"DELETE FROM \"{self.schema}\".agent_sessions WHERE updated_at < now() - interval '30 days'"
        )
        return int(status.split()[-1])

    async def fill(self, sid: str, n: int) -> None:
        await self.admin.execute(
            f'INSERT INTO "{self.schema}".conversation_messages (session_id, role, content, created_at) '
            "SELECT $1::uuid, 'user', 'message number ' || g, clock_timestamp() FROM generate_series(1, $2) g",
            sid,
            n,
        )

    async def fill_old_sessions(self, count: int, user: str) -> None:
        s = self.schema
        await self.admin.execute(
            f'INSERT INTO "{s}".agent_sessions (id, user_id, agent_name, updated_at) '
            "SELECT lpad(to_hex(g), 32, '0')::uuid, $1, 'bench', now() - interval '40 days' "
            "FROM generate_series(1, $2) g",
            user,
            count,
        )
        await self.admin.execute(f'ANALYZE "{s}".agent_sessions')  # see Floor.fill_old_sessions
        await self.admin.execute(
            f'INSERT INTO "{s}".conversation_messages (session_id, role, content) '
            "SELECT lpad(to_hex(g), 32, '0')::uuid, 'user', 'hello' "
            "FROM generate_series(1, $1) g, generate_series(1, 2)",
            count,
        )


SYSTEMS: dict[str, type[System]] = {
    cls.name: cls
    for cls in (
        Floor,
        Convostore,
        ConvostoreRLS,
        ConvostoreSealed,
        ConvostoreTokens,
        ConvostoreSearch,
        ConvostoreSDK,
        SQLAlchemySDK,
        Langchain,
        ConvostoreLangchain,
        Seed,
    )
}
