"""pytest plugin: ADK's session-service contract tests against ``PostgresSessionService``.

Loaded with ``-p conformance.frameworks.adk_plugin`` from the root of an adk-python tree (the
runner, ``python -m conformance.frameworks adk``, does that). ADK's contract tests take the
``session_service`` fixture of ``tests/unittests/sessions/_conformance.py``, the registry of
backends held to the contract; an import hook installs :mod:`.adk_registry` under that
module's name, so every contract test runs on convostore and no test file is touched. Tests
that build ADK's own backends themselves are classified not applicable.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

import pytest

from . import _report, adk_registry
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
from .classification import ADK

__all__ = [
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

_REGISTRY = "sessions._conformance"
"""The tail of the registry's module name (its head depends on how pytest roots the tests)."""

_report.use(ADK)


class _Registry(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers any import of ``*.sessions._conformance`` with the stand-in registry (ADK's own
    file, if present, is never executed: it registers ADK's backends and fakes)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == _REGISTRY or fullname.endswith("." + _REGISTRY):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        for name in ("_Backend", "BACKENDS", "session_service"):
            setattr(module, name, getattr(adk_registry, name))
        module.__doc__ = adk_registry.__doc__


sys.meta_path.insert(0, _Registry())


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly if a contract test would run on anything but the stand-in registry."""
    for modname, module in list(sys.modules.items()):
        registry = getattr(module, "_conformance", None) if modname.endswith("test_session_service") else None
        if registry is not None and registry.BACKENDS is not adk_registry.BACKENDS:
            raise pytest.UsageError(f"{modname} imported ADK's own backend registry: the swap missed it")
