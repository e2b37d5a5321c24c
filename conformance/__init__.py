"""SDK conformance: the OpenAI Agents SDK's own session tests, run against convostore.

``python -m conformance`` (see ``conformance/README.md``) downloads the source distribution
of openai-agents :data:`SDK_VERSION`, extracts it under :data:`CACHE_DIR` and runs its
``tests/memory`` and ``tests/extensions/memory`` with the pytest plugin
:mod:`conformance.plugin`, which replaces the SDK's storage backends with convostore's
``PostgresSession``. No test file is modified.

This module only holds constants: the plugin imports it inside the test process.
"""

from __future__ import annotations

from pathlib import Path

SDK_VERSION = "0.24.0"
"""The openai-agents release whose tests are run; the installed openai-agents must be this one."""

SDIST_NAME = f"openai_agents-{SDK_VERSION}"
SDIST_SHA256 = "4b4b285f4fed81fdf1b4ac426a9101658d9cd29b4fb1aaeee18f639b77e704e3"
"""The sha256 PyPI publishes for ``openai_agents-0.24.0.tar.gz``."""

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = PROJECT_ROOT / ".cache" / f"openai-agents-{SDK_VERSION}"
"""The downloaded sdist, its extracted tree and the results of the last run (ignored by git)."""

SDIST_ROOT = CACHE_DIR / SDIST_NAME
RESULTS_PATH = CACHE_DIR / "results.json"

REQUIRED_MODULES = ("aiosqlite", "cryptography", "sqlalchemy", "redis", "fakeredis", "dapr", "grpc", "pytest_timeout")
"""Test dependencies without which some of the SDK's session tests skip themselves (or their
whole file), or, for fakeredis, try a real Redis server: a run without them would be quietly
partial. They come with convostore's ``conformance`` extra."""

DEFAULT_TARGETS = ("tests/memory", "tests/extensions/memory")
"""The SDK's session test folders, relative to the sdist root."""
