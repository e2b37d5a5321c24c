"""Per-test storage for the framework suites: each test gets its own schemas, dropped after.

:func:`make_store` is the one place a store is built. Stores are registered with the current
test; :func:`cleanup` closes them (and any synchronous facade built on them), ends the
connections still tagged with their schemas (pools left on event loops that are gone) and
drops the schemas.
"""

from __future__ import annotations

import itertools
import sys
import threading
import uuid
from dataclasses import dataclass, field

from convostore import PostgresSessionStore
from convostore.sync import SyncSessionStore

from .._shared import drop_stores
from . import APP_NAME_PREFIX, database_url

_counter = itertools.count(1)


@dataclass
class TestStorage:
    """The stores one test built."""

    nodeid: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    stores: list[PostgresSessionStore] = field(default_factory=list)
    facades: list[SyncSessionStore] = field(default_factory=list)


_current: TestStorage | None = None
_lock = threading.Lock()


def begin_test(nodeid: str) -> None:
    global _current
    with _lock:
        _current = TestStorage(nodeid)


def end_test() -> TestStorage | None:
    global _current
    with _lock:
        st, _current = _current, None
    return st


def make_store() -> PostgresSessionStore:
    """A store (no I/O yet) on a fresh schema of the current test; it migrates on first use.
    The application_name tags its connections so that cleanup can end exactly these."""
    with _lock:
        st = _current if _current is not None else TestStorage("(outside a test)")
        schema = f"fwc_{st.tag}_{next(_counter)}"
        url = database_url()
        sep = "&" if "?" in url else "?"
        store = PostgresSessionStore(f"{url}{sep}application_name={APP_NAME_PREFIX}{schema}", schema=schema)
        st.stores.append(store)
        return store


def make_facade(store: PostgresSessionStore) -> SyncSessionStore:
    """A synchronous facade of *store* (its own loop thread), closed with the test."""
    facade = SyncSessionStore(store=store)
    with _lock:
        if _current is not None:
            _current.facades.append(facade)
    return facade


def cleanup(st: TestStorage) -> None:
    """Close the test's facades and stores, end their leftover connections, drop the schemas."""
    for facade in st.facades:
        try:
            facade.close()
        except Exception as exc:  # cleanup goes on; said, not swallowed
            print(f"[conformance] closing a sync facade of {st.nodeid}: {exc!r}", file=sys.stderr)
    if st.stores:
        drop_stores(st.stores, st.nodeid, database_url(), APP_NAME_PREFIX)
