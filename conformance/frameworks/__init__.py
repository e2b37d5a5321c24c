"""Framework conformance: Google ADK's and LangChain's own tests, run against convostore.

``python -m conformance.frameworks adk|langchain`` (see ``conformance/README.md``) runs the
frameworks' own test files, unmodified, with a pytest plugin that swaps the class under test
for convostore's adapter: ``convostore.adk.PostgresSessionService`` for ADK's session-service
contract suite, ``convostore.langchain.PostgresChatMessageHistory`` for LangChain's chat
histories. This module only holds constants: the plugins import it inside the test process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
CACHE_ROOT = PROJECT_ROOT / ".cache"

# -- Google ADK --------------------------------------------------------------------------------

ADK_VERSION = "2.13.0"
"""The google-adk release the tests are for; the installed google-adk must be this one."""

ADK_TESTS_ENV = "CONVOSTORE_ADK_TESTS"
"""Names the root of an adk-python source tree (the folder holding ``tests/unittests``).
google-adk's sdist on PyPI ships no tests, so they come from GitHub, which CI cannot reach."""

ADK_DEFAULT_TESTS = CACHE_ROOT / "adk-python-tests"
"""Used when neither ``--adk-tests`` nor :data:`ADK_TESTS_ENV` is given, if it exists."""

ADK_TARGETS = ("tests/unittests/sessions/test_session_service.py",)
"""ADK's session-service contract suite (its ``session_service`` fixture comes from
``tests/unittests/sessions/_conformance.py``, the backend registry the plugin replaces)."""

ADK_RESULTS = CACHE_ROOT / "framework-conformance" / "adk-results.json"

# -- LangChain -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sdist:
    """A source distribution whose tests are run, pinned by its sha256 (PyPI's)."""

    project: str
    version: str
    sha256: str
    targets: tuple[str, ...]

    @property
    def stem(self) -> str:
        return f"{self.project.replace('-', '_')}-{self.version}"

    @property
    def cache_dir(self) -> Path:
        return CACHE_ROOT / "framework-conformance" / self.stem

    @property
    def root(self) -> Path:
        return self.cache_dir / self.stem

    @property
    def results(self) -> Path:
        return self.cache_dir / "results.json"


LANGCHAIN_SDISTS = (
    Sdist(
        "langchain-core",
        "1.8.3",
        "ce448f055dd2cf1db7def27d2b6c2902519369642e8b89d08255c7ca7abd6b36",
        ("tests/unit_tests/chat_history",),
    ),
    Sdist(
        "langchain-postgres",
        "0.0.19",
        "3e6f862dfa202df7f671edb987650901786d6e1458a019fcc8d0d9c08fdee8f1",
        ("tests/unit_tests/v1/test_chat_histories.py",),
    ),
)
"""langchain-tests (1.1.9, the newest) has no standard tests for chat message histories, so
these two projects' own chat-history tests are run; each sdist's installed version must match."""

LANGCHAIN_REQUIRED_MODULES = ("blockbuster", "pytest_mock", "syrupy", "psycopg", "pytest_timeout")
"""What langchain-core's test conftest and pytest configuration need, and langchain-postgres'
test helpers (they open a psycopg connection, which the stand-in ignores)."""

APP_NAME_PREFIX = "fwconf_"


def database_url() -> str:
    """``$CONFORMANCE_DATABASE_URL`` (the runner sets it), else ``$DATABASE_URL``, else the
    embedded PostgreSQL."""
    url = os.environ.get("CONFORMANCE_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return url
    from convostore.embedded import embedded_url

    return embedded_url()
