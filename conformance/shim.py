"""Stand-ins for the Agents SDK's session backends, each a convostore ``PostgresSession``.

Every class here takes the constructor signature (and alternate constructors) of the SDK
class it replaces, ignores the backend-specific arguments except to decide which sessions
share storage, and builds a ``PostgresSession`` on a schema of the current test's own.

Storage sharing follows the replaced backend's semantics, inside one test only:

* ``SQLiteSession`` / ``AsyncSQLiteSession``: ``db_path=':memory:'`` gets a private schema per
  instance (an in-memory SQLite database is private to its connection); a file path gets
  one schema per resolved path.
* ``SQLAlchemySession``: one schema per engine object; ``from_url`` one per URL (a
  ``:memory:`` URL gets a private schema per call, as a new engine would; sessions built on
  that session's ``engine`` share it).
* ``RedisSession``: one schema per (client object or URL, key_prefix).
* ``MongoDBSession``: one schema per (client object or URI, database, collections).
* ``DaprSession``: one schema per (client object or address, state_store_name).

The store handed to each ``PostgresSession`` is a real ``PostgresSessionStore`` per schema,
built by :func:`make_store` (adapt it when the store's API changes: nothing else builds a
store). The store opens a pool per event loop on first use, which the SDK tests need: they
use one session from several loops (``Runner.run_sync`` in a thread, ``asyncio.run`` per
turn, worker threads).

Lifecycle methods that the replaced classes have but the ``Session`` protocol does not
(``close``, ``ping``, ``async with``) are harmless adapters here, so that tests which merely
clean up still run; tests about those lifecycles are classified not-applicable.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from convostore import PostgresSessionStore
from convostore.openai_agents import PostgresSession

APP_NAME_PREFIX = "sdkconf_"


@functools.cache
def database_url() -> str:
    """``$CONFORMANCE_DATABASE_URL`` (the runner sets it), else ``$DATABASE_URL``, else the
    embedded PostgreSQL (started or joined now)."""
    url = os.environ.get("CONFORMANCE_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return url
    from convostore.embedded import embedded_url

    return embedded_url()


# ---------------------------------------------------------------------------------------
# The one place a store is built.
# ---------------------------------------------------------------------------------------


def make_store(schema: str) -> PostgresSessionStore:
    """Build (no I/O) the store for *schema*; it connects and migrates on first use. The
    application_name tags its connections so the harness can end exactly these after the
    test. (A store that needs an explicit ``await store.connect()`` would need it called on
    first use in each event loop, e.g. by a wrapping store; this one does not.)"""
    url = database_url()
    sep = "&" if "?" in url else "?"
    return PostgresSessionStore(f"{url}{sep}application_name={APP_NAME_PREFIX}{schema}", schema=schema)


# ---------------------------------------------------------------------------------------
# Per-test registry of schemas.
# ---------------------------------------------------------------------------------------


@dataclass
class TestStorage:
    """The stores one test used; set by the pytest plugin around each test."""

    nodeid: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    by_key: dict[Any, PostgresSessionStore] = field(default_factory=dict)
    keep_alive: list[Any] = field(default_factory=list)  # objects whose id() is part of a key
    sessions_built: int = 0
    counter: itertools.count[int] = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stores(self) -> list[PostgresSessionStore]:
        return list(self.by_key.values())


_current: TestStorage | None = None
_outside_tests = TestStorage("<outside any test>")


def begin_test(nodeid: str) -> TestStorage:
    global _current
    _current = TestStorage(nodeid)
    return _current


def end_test() -> TestStorage | None:
    global _current
    done, _current = _current, None
    return done


def _storage() -> TestStorage:
    return _current or _outside_tests


def store_for(key: Any, *, keep: Any = None) -> PostgresSessionStore:
    """The store for *key* in the current test (``None``: a private one)."""
    st = _storage()
    with st.lock:
        st.sessions_built += 1
        if keep is not None:
            st.keep_alive.append(keep)
        if key is None:
            key = ("private", next(st.counter))
        store = st.by_key.get(key)
        if store is None:
            store = make_store(f"sdkc_{st.tag}_{len(st.by_key)}")
            st.by_key[key] = store
        return store


# ---------------------------------------------------------------------------------------
# The stand-ins.
# ---------------------------------------------------------------------------------------


def _private_if_memory(text: str) -> bool:
    return ":memory:" in text or "mode=memory" in text


_memory_engines = itertools.count(1)


class _Shim(PostgresSession):
    """A PostgresSession built from another backend's constructor arguments."""

    def __init__(self, session_id: str, *, _key: Any, _keep: Any = None, session_settings: Any = None) -> None:
        super().__init__(session_id, store=store_for(_key, keep=_keep), session_settings=session_settings)


class SQLiteSession(_Shim):
    """For ``agents.SQLiteSession(session_id, db_path=':memory:', sessions_table=...,
    messages_table=..., session_settings=None)``."""

    def __init__(
        self,
        session_id: str,
        db_path: str | Path = ":memory:",
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
    ) -> None:
        key = None if str(db_path) == ":memory:" else ("sqlite", str(Path(db_path).expanduser().resolve()))
        super().__init__(session_id, _key=key, session_settings=session_settings)

    def close(self) -> None:
        """Adapter: SQLiteSession.close() is sync and not part of the Session protocol."""


class AsyncSQLiteSession(_Shim):
    """For ``AsyncSQLiteSession(session_id, db_path=':memory:', sessions_table=...,
    messages_table=..., session_settings=None)``."""

    def __init__(
        self,
        session_id: str,
        db_path: str | Path = ":memory:",
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
    ) -> None:
        key = None if str(db_path) == ":memory:" else ("sqlite", str(Path(db_path).expanduser().resolve()))
        super().__init__(session_id, _key=key, session_settings=session_settings)

    async def close(self) -> None:
        """Adapter: not part of the Session protocol."""


class SQLAlchemySession(_Shim):
    """For ``SQLAlchemySession(session_id, *, engine, create_tables=False, sessions_table=...,
    messages_table=..., session_settings=None, ensure_ascii=True)`` and ``from_url``."""

    def __init__(
        self,
        session_id: str,
        *,
        engine: Any,
        create_tables: bool = False,
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
        ensure_ascii: bool = True,
    ) -> None:
        # from_url's stand-in engine: one schema per URL, except that an in-memory URL gets
        # its own (a new engine is a new database); passing that engine on shares it.
        key = (
            ("sqlalchemy-url", engine.url, engine.instance)
            if isinstance(engine, _UrlKey)
            else ("sqlalchemy-engine", id(engine))
        )
        super().__init__(session_id, _key=key, _keep=engine, session_settings=session_settings)
        self._engine = engine

    @property
    def engine(self) -> Any:
        """Adapter: tests dispose of ``session.engine`` when done. The engine passed in, or
        for ``from_url`` a stand-in whose ``dispose()`` does nothing."""
        return self._engine

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        url: str,
        engine_kwargs: dict[str, Any] | None = None,
        session_settings: Any = None,
        **kwargs: Any,
    ) -> SQLAlchemySession:
        instance = next(_memory_engines) if _private_if_memory(str(url)) else 0
        return cls(session_id, engine=_UrlKey(str(url), instance), session_settings=session_settings, **kwargs)


@dataclass(frozen=True)
class _UrlKey:
    """What ``from_url``-style constructors pass on instead of a client or engine."""

    url: str
    instance: int = 0
    """Tells apart the in-memory databases of ``from_url(':memory:')`` calls (0: any other URL)."""

    async def dispose(self) -> None:
        """Lets tests ``await session.engine.dispose()``."""


class RedisSession(_Shim):
    """For ``RedisSession(session_id, *, redis_client, key_prefix='agents:session', ttl=None,
    session_settings=None)`` and ``from_url``."""

    def __init__(
        self,
        session_id: str,
        *,
        redis_client: Any,
        key_prefix: str = "agents:session",
        ttl: int | None = None,
        session_settings: Any = None,
    ) -> None:
        client_key = redis_client.url if isinstance(redis_client, _UrlKey) else id(redis_client)
        super().__init__(
            session_id, _key=("redis", client_key, key_prefix), _keep=redis_client, session_settings=session_settings
        )
        # Adapter: tests build a second session on an existing one's client (`redis_client=s._redis`).
        self._redis = redis_client

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        url: str,
        redis_kwargs: dict[str, Any] | None = None,
        session_settings: Any = None,
        **kwargs: Any,
    ) -> RedisSession:
        return cls(session_id, redis_client=_UrlKey(url), session_settings=session_settings, **kwargs)

    async def close(self) -> None:
        """Adapter: not part of the Session protocol."""

    async def ping(self) -> bool:
        """Adapter: not part of the Session protocol."""
        return True


class MongoDBSession(_Shim):
    """For ``MongoDBSession(session_id, *, client, database='agents', sessions_collection=...,
    messages_collection=..., session_settings=None)`` and ``from_uri``."""

    # The SDK's test helper clears this class attribute before each construction.
    _init_state: ClassVar[dict[Any, Any]] = {}

    def __init__(
        self,
        session_id: str,
        *,
        client: Any,
        database: str = "agents",
        sessions_collection: str = "agent_sessions",
        messages_collection: str = "agent_messages",
        session_settings: Any = None,
    ) -> None:
        client_key = client.url if isinstance(client, _UrlKey) else id(client)
        key = ("mongodb", client_key, database, sessions_collection, messages_collection)
        super().__init__(session_id, _key=key, _keep=client, session_settings=session_settings)

    @classmethod
    def from_uri(
        cls,
        session_id: str,
        *,
        uri: str,
        database: str = "agents",
        client_kwargs: dict[str, Any] | None = None,
        session_settings: Any = None,
        **kwargs: Any,
    ) -> MongoDBSession:
        return cls(session_id, client=_UrlKey(uri), database=database, session_settings=session_settings, **kwargs)

    async def close(self) -> None:
        """Adapter: not part of the Session protocol."""

    async def ping(self) -> bool:
        """Adapter: not part of the Session protocol."""
        return True


class DaprSession(_Shim):
    """For ``DaprSession(session_id, *, state_store_name, dapr_client, ttl=None,
    consistency=..., session_settings=None)`` and ``from_address``."""

    def __init__(
        self,
        session_id: str,
        *,
        state_store_name: str,
        dapr_client: Any,
        ttl: int | None = None,
        consistency: Any = None,
        session_settings: Any = None,
    ) -> None:
        client_key = dapr_client.url if isinstance(dapr_client, _UrlKey) else id(dapr_client)
        key = ("dapr", client_key, state_store_name)
        super().__init__(session_id, _key=key, _keep=dapr_client, session_settings=session_settings)

    @classmethod
    def from_address(
        cls,
        session_id: str,
        *,
        state_store_name: str,
        dapr_address: str = "localhost:50001",
        session_settings: Any = None,
        **kwargs: Any,
    ) -> DaprSession:
        return cls(
            session_id,
            state_store_name=state_store_name,
            dapr_client=_UrlKey(dapr_address),
            session_settings=session_settings,
            **kwargs,
        )

    async def close(self) -> None:
        """Adapter: not part of the Session protocol."""

    async def ping(self) -> bool:
        """Adapter: not part of the Session protocol."""
        return True

    async def __aenter__(self) -> DaprSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


# (module holding the SDK class, attribute) -> stand-in.  Also set on the packages that
# re-export them, so every way the tests import a class gives the stand-in.
REPLACEMENTS: dict[str, dict[str, type[PostgresSession]]] = {
    "agents": {"SQLiteSession": SQLiteSession},
    "agents.memory": {"SQLiteSession": SQLiteSession},
    # agents.memory.sqlite_session is deliberately left alone: the SDK's EncryptedSession
    # imports SQLiteSession from there for an isinstance() fast path that must stay false.
    "agents.extensions.memory": {
        "AsyncSQLiteSession": AsyncSQLiteSession,
        "SQLAlchemySession": SQLAlchemySession,
        "RedisSession": RedisSession,
        "MongoDBSession": MongoDBSession,
        "DaprSession": DaprSession,
    },
    "agents.extensions.memory.async_sqlite_session": {"AsyncSQLiteSession": AsyncSQLiteSession},
    "agents.extensions.memory.sqlalchemy_session": {"SQLAlchemySession": SQLAlchemySession},
    "agents.extensions.memory.redis_session": {"RedisSession": RedisSession},
    "agents.extensions.memory.mongodb_session": {"MongoDBSession": MongoDBSession},
    "agents.extensions.memory.dapr_session": {"DaprSession": DaprSession},
}

SHIM_CLASSES = (SQLiteSession, AsyncSQLiteSession, SQLAlchemySession, RedisSession, MongoDBSession, DaprSession)
