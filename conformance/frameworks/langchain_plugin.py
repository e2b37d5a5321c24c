"""pytest plugin: LangChain's chat-history tests against ``PostgresChatMessageHistory``.

Loaded with ``-p conformance.frameworks.langchain_plugin`` from the root of an extracted
langchain-core or langchain-postgres sdist (the runner does that). Before any test module is
imported it replaces

* ``langchain_core.chat_history.InMemoryChatMessageHistory`` with :class:`InMemoryStandIn`,
* ``langchain_postgres.PostgresChatMessageHistory`` (and in ``chat_message_histories``) with
  :class:`LangchainPostgresStandIn`,

both subclasses of convostore's ``PostgresChatMessageHistory`` that take the replaced class's
constructor and keep their messages in a schema of the test's own.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from convostore.langchain import PostgresChatMessageHistory

from . import _report, _storage
from ._report import (
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_collectreport,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_runtest_setup,
    pytest_runtest_teardown,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from .classification import LANGCHAIN

__all__ = [
    "InMemoryStandIn",
    "LangchainPostgresStandIn",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_collectreport",
    "pytest_configure",
    "pytest_runtest_logreport",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
]

_report.use(LANGCHAIN)


def _history(session_id: str) -> dict[str, Any]:
    store = _storage.make_store()
    return {"session_id": session_id, "store": _storage.make_facade(store)}


class InMemoryStandIn(PostgresChatMessageHistory):
    """``InMemoryChatMessageHistory(messages=[...])``: a conversation of its own (an in-memory
    history is private to its object), seeded with *messages*."""

    def __init__(self, *, messages: Sequence[BaseMessage] = ()) -> None:
        super().__init__(**_history(f"inmem-{uuid.uuid4().hex}"))
        if messages:
            self.add_messages(list(messages))


class LangchainPostgresStandIn(PostgresChatMessageHistory):
    """langchain-postgres' ``PostgresChatMessageHistory(table_name, session_id, /, *,
    sync_connection=None, async_connection=None)``: one schema per table name and test (the
    connections are accepted and not used)."""

    def __init__(
        self, table_name: str, session_id: str, /, *, sync_connection: Any = None, async_connection: Any = None
    ) -> None:
        super().__init__(**_history(session_id))

    # Table management: convostore migrates its own schema; every test has a fresh one.
    @staticmethod
    def create_tables(connection: Any, table_name: str, /) -> None:
        """No-op: the store creates its tables on first use."""

    @staticmethod
    def drop_table(connection: Any, table_name: str, /) -> None:
        """No-op: the test's schema is new, and dropped after the test."""

    @staticmethod
    async def acreate_tables(connection: Any, table_name: str, /) -> None:
        """No-op: the store creates its tables on first use."""

    @staticmethod
    async def adrop_table(connection: Any, table_name: str, /) -> None:
        """No-op: the test's schema is new, and dropped after the test."""


_SWAPS: dict[str, dict[str, type[PostgresChatMessageHistory]]] = {
    "langchain_core.chat_history": {"InMemoryChatMessageHistory": InMemoryStandIn},
    "langchain_postgres": {"PostgresChatMessageHistory": LangchainPostgresStandIn},
    "langchain_postgres.chat_message_histories": {"PostgresChatMessageHistory": LangchainPostgresStandIn},
}

for _module, _names in _SWAPS.items():
    try:
        _mod = importlib.import_module(_module)
    except ImportError:  # langchain-postgres is only needed for its own tests
        continue
    for _name, _stand_in in _names.items():
        setattr(_mod, _name, _stand_in)
    sys.modules[_module] = _mod
