"""The stand-in for ADK's ``tests/unittests/sessions/_conformance.py``: its backend registry
with convostore's ``PostgresSessionService`` as the one backend held to the contract.

ADK's registry is where a backend joins the shared contract tests: every test that takes the
``session_service`` fixture runs once per backend in ``BACKENDS``. This module keeps its
shape (``_Backend``, ``BACKENDS``, the ``session_service`` fixture); the plugin installs it
under the registry's module name, so the test file imports it unchanged. Divergences are not
recorded here but in :mod:`conformance.frameworks.classification`, like the SDK harness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import pytest_asyncio
from google.adk.sessions.base_session_service import BaseSessionService

from convostore.adk import PostgresSessionService

from . import _storage

_MakeService = Callable[[pathlib.Path], contextlib.AbstractAsyncContextManager[BaseSessionService]]


@dataclasses.dataclass(frozen=True)
class _Backend:
    """A session service implementation held to the shared contract."""

    name: str
    make: _MakeService
    divergences: Mapping[str, str] = dataclasses.field(default_factory=dict)


@contextlib.asynccontextmanager
async def _make_convostore(tmp_path: pathlib.Path) -> AsyncIterator[BaseSessionService]:
    del tmp_path
    store = _storage.make_store()  # a schema of the test's own, dropped after it
    try:
        yield PostgresSessionService(store)
    finally:
        await store.close()


BACKENDS = [_Backend("convostore", _make_convostore)]


@pytest_asyncio.fixture(params=BACKENDS, ids=lambda backend: backend.name)
async def session_service(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[BaseSessionService]:
    """Yields each registered backend in turn (here: convostore's)."""
    backend: _Backend = request.param
    async with backend.make(tmp_path) as service:
        yield service
