"""pytest plugin: run the Agents SDK's own session tests against convostore.

Loaded with ``-p conformance.plugin`` from the root of the extracted openai-agents sdist (the
runner, ``python -m conformance``, does that), so the SDK's own pytest configuration and
conftest apply and no test file is touched. It

1. replaces the SDK's storage backends with the stand-ins of :mod:`conformance.shim` in every
   module the tests import them from, before any test module is imported;
2. gives each test its own PostgreSQL schemas, closes the stores afterwards, ends any
   connection left on a closed event loop and drops the schemas;
3. skips the tests listed as not applicable in :mod:`conformance.classification` (unless
   ``--run-not-applicable``) and leaves out the excluded files;
4. records, per test, the outcome and how many stand-in sessions it built, writes
   ``--conformance-results`` (JSON), prints a summary, and makes the run fail when a known
   difference now passes, a test skips itself for a reason not classified here (a missing
   dependency, say), or a classification entry matches no collected test.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from collections.abc import Generator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from . import REQUIRED_MODULES, classification, shim
from ._shared import drop_stores, match, matches

# ---------------------------------------------------------------------------------------
# 1. The swap, done at plugin import (before conftest and test modules are imported).
# ---------------------------------------------------------------------------------------


def _apply(module: ModuleType) -> None:
    for name, stand_in in shim.REPLACEMENTS.get(module.__name__, {}).items():
        module.__dict__[name] = stand_in


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Patches a target module right after its body runs (the extension modules are imported
    lazily, and the MongoDB tests install fake driver modules before importing theirs)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in shim.REPLACEMENTS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None:
            return spec
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            _apply(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _PatchAfterImport())
importlib.import_module("agents.extensions.memory")
for _name in shim.REPLACEMENTS:
    if _name in sys.modules:
        _apply(sys.modules[_name])


# ---------------------------------------------------------------------------------------
# Options and configuration.
# ---------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "convostore SDK conformance")
    group.addoption(
        "--run-not-applicable",
        action="store_true",
        default=False,
        help="also run the tests classified not applicable (they are reported apart)",
    )
    group.addoption(
        "--conformance-results",
        default=None,
        metavar="PATH",
        help="write the per-test results (outcome, message, PostgresSession count, classification) as JSON",
    )


_run_na = False
_results_path: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _run_na, _results_path
    _run_na = bool(config.getoption("run_not_applicable"))
    _results_path = config.getoption("conformance_results")
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"missing test dependencies {missing}: install convostore's `conformance` extra "
            "(pip install -e '.[dev,conformance]'); without them the SDK tests skip themselves"
        )


# ---------------------------------------------------------------------------------------
# 3. Exclusions and not-applicable skips.
# ---------------------------------------------------------------------------------------


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not collection_path.is_relative_to(config.rootpath):
        return None
    if collection_path.relative_to(config.rootpath).as_posix() in classification.EXCLUDED_FILES:
        return True
    return None


_collected: set[str] = set()
"""Every test collected (before -k/-m/--deselect), to find classification keys that match none."""
_collected_files: set[str] = set()


def pytest_collectreport(report: pytest.CollectReport) -> None:
    for node in report.result:
        if isinstance(node, pytest.Item):
            _collected.add(node.nodeid)
            _collected_files.add(node.nodeid.split("::", 1)[0])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _check_swapped()
    for item in items:
        reason = match(item.nodeid, classification.NOT_APPLICABLE)
        if reason is not None:
            item.user_properties.append(("conformance_na", reason))
            if not _run_na:
                item.add_marker(pytest.mark.skip(reason=f"N/A: {reason}"))


def _check_swapped() -> None:
    """Fail loudly if some test module still holds an original SDK backend class."""
    names = {n for table in shim.REPLACEMENTS.values() for n in table}
    for modname, module in list(sys.modules.items()):
        if not modname.startswith(("tests.memory", "tests.extensions.memory")):
            continue
        for name in names:
            value = getattr(module, name, None)
            if isinstance(value, type) and value not in shim.SHIM_CLASSES and value.__module__.startswith("agents."):
                raise pytest.UsageError(f"{modname}.{name} is still the SDK class {value!r}: the swap missed it")


# ---------------------------------------------------------------------------------------
# 2. Per-test storage and cleanup.
# ---------------------------------------------------------------------------------------

_built: dict[str, int] = {}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    shim.begin_test(item.nodeid)
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    try:
        return (yield)  # fixture finalizers (which may still use a session) and event-loop shutdown
    finally:
        st = shim.end_test()
        if st is not None:
            _built[item.nodeid] = st.sessions_built
            _cleanup(st)


def _cleanup(st: shim.TestStorage) -> None:
    """Close the test's stores, end their leftover connections, drop their schemas."""
    stores = st.stores()
    if stores:
        drop_stores(stores, st.nodeid, shim.database_url(), shim.APP_NAME_PREFIX)


# ---------------------------------------------------------------------------------------
# 4. Results and summary.
# ---------------------------------------------------------------------------------------

_reports: dict[str, dict[str, Any]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _reports.setdefault(report.nodeid, {"outcome": "passed", "phases": {}, "message": ""})
    entry["phases"][report.when] = report.outcome
    if report.outcome == "skipped" and report.when in ("setup", "call"):
        entry["outcome"] = "skipped"
        if isinstance(report.longrepr, tuple):
            entry["message"] = report.longrepr[2]
    elif report.outcome == "failed":
        entry["outcome"] = "failed" if report.when == "call" else "error"
        crash = getattr(report.longrepr, "reprcrash", None)
        entry["message"] = (crash.message if crash is not None else str(report.longrepr)).strip()
        entry["when"] = report.when
    for key, value in report.user_properties:
        if key == "conformance_na":
            entry["na"] = value


Categories = dict[str, list[tuple[str, dict[str, Any]]]]


def _categorize() -> Categories:
    cats: Categories = {
        "passed": [],
        "passed_without_postgres": [],
        "failed_known": [],
        "failed_unclassified": [],
        "known_now_passing": [],
        "na_skipped": [],
        "na_failed": [],
        "na_passed": [],
        "skipped_other": [],
    }
    for nodeid, e in sorted(_reports.items()):
        e["postgres_sessions"] = _built.get(nodeid, 0)
        known = match(nodeid, classification.KNOWN_DIFFERENCES)
        if known is not None:
            e["known_difference"] = known
        if "na" in e:
            key = {"skipped": "na_skipped", "passed": "na_passed"}.get(e["outcome"], "na_failed")
        elif e["outcome"] == "skipped":
            key = "skipped_other"
        elif e["outcome"] == "passed":
            if known is not None:
                key = "known_now_passing"
            elif e["postgres_sessions"] == 0:
                key = "passed_without_postgres"
            else:
                key = "passed"
        else:
            key = "failed_known" if known is not None else "failed_unclassified"
        cats[key].append((nodeid, e))
    return cats


def _stale_keys() -> list[str]:
    """Classification keys of a collected file that match no collected test (renamed or
    removed tests: the classification needs updating)."""
    tables = (classification.NOT_APPLICABLE, classification.KNOWN_DIFFERENCES)
    stale = []
    for table in tables:
        for pattern in table:
            if pattern.split("::", 1)[0] not in _collected_files:
                continue
            if not any(matches(nodeid, pattern) for nodeid in _collected):
                stale.append(pattern)
    return stale


_cats: Categories | None = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _cats
    _cats = _categorize()
    unexpected = _cats["known_now_passing"] or _cats["skipped_other"] or _stale_keys()
    if unexpected and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _convostore_version() -> str:
    import convostore

    src = Path(convostore.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True, text=True
        )
    except OSError:
        return str(src)
    state = " + uncommitted changes" if dirty.stdout.strip() else ""
    return f"{src} at {head.stdout.strip() or '?'}{state}"


def _first_line(text: str | None, width: int) -> str:
    return (text or "").strip().splitlines()[0][:width] if (text or "").strip() else ""


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    cats = _cats if _cats is not None else _categorize()
    w = terminalreporter.write_line
    terminalreporter.section("convostore conformance summary")
    w(f"convostore: {_convostore_version()}")
    w(f"database: {_redacted(shim.database_url())}; not-applicable tests run: {_run_na}")
    w("excluded files (not collected):")
    for path, reason in classification.EXCLUDED_FILES.items():
        w(f"  {path}: {reason}")

    def block(title: str, key: str, show: str | None) -> None:
        entries = cats[key]
        w(f"{title}: {len(entries)}")
        if show is None:
            return
        for nodeid, e in entries:
            w(f"  {nodeid}")
            if show == "known_difference":
                w(f"      got: {_first_line(e.get('message'), 200)}")
            else:
                w(f"      -> {_first_line(e.get(show) or e.get('message'), 300)}")

    block("passed, exercising PostgresSession", "passed", None)
    block("passed, no PostgresSession constructed (SDK-only code paths)", "passed_without_postgres", None)
    block("FAILED, known behaviour differences", "failed_known", "known_difference")
    if cats["failed_known"]:
        w("  what the known differences are:")
        for text in sorted({e["known_difference"] for _, e in cats["failed_known"]}):
            w(f"   * {text}")
    block("FAILED, unclassified (new? look at these)", "failed_unclassified", "message")
    block("known differences now PASSING (update classification.py)", "known_now_passing", "known_difference")
    block("skipped, not applicable (another backend's internals, or refused by design)", "na_skipped", None)
    if _run_na:
        block("not applicable, run anyway: failed", "na_failed", "na")
        block("not applicable, run anyway: passed", "na_passed", "na")
    block("skipped for other reasons (unexpected: classify them or fix the setup)", "skipped_other", "message")
    stale = _stale_keys()
    if stale:
        w(f"classification entries matching no collected test (update classification.py): {len(stale)}")
        for pattern in stale:
            w(f"  {pattern}")
    built = sum(1 for e in _reports.values() if e.get("postgres_sessions", 0) > 0)
    passed = sum(len(cats[k]) for k in ("passed", "passed_without_postgres", "known_now_passing", "na_passed"))
    failed = sum(len(cats[k]) for k in ("failed_known", "failed_unclassified", "na_failed"))
    skipped = len(cats["na_skipped"]) + len(cats["skipped_other"])
    w(f"tests that built a PostgresSession: {built}")
    w(
        f"conformance: {passed} passed, {failed} failed, {skipped} skipped "
        f"({len(cats['failed_known'])} known differences, {len(cats['failed_unclassified'])} unclassified, "
        f"{len(cats['known_now_passing'])} known differences now passing, {len(stale)} stale entries)"
    )
    if _results_path:
        out = dict(sorted(_reports.items()))
        Path(_results_path).write_text(json.dumps(out, indent=1, default=str))
        w(f"per-test results: {_results_path}")


def _redacted(url: str) -> str:
    """*url* without its password."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{at}{host}"
