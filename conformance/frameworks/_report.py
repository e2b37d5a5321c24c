"""The hooks the framework plugins share: not-applicable skips, per-test storage, results
and the summary. A suite plugin calls :func:`use` with its classification and re-exports
these hooks (pytest registers every ``pytest_*`` attribute of a plugin module)."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from .._shared import match, matches
from . import _storage, database_url
from .classification import Classification

_suite: Classification | None = None
_run_na = False
_results_path: str | None = None
_built: dict[str, int] = {}
_reports: dict[str, dict[str, Any]] = {}
_collected: set[str] = set()


def use(suite: Classification) -> None:
    """Set the classification of the suite being run."""
    global _suite
    _suite = suite


def _classification() -> Classification:
    if _suite is None:
        raise RuntimeError("a framework plugin must call _report.use() at import")
    return _suite


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "convostore framework conformance")
    group.addoption("--run-not-applicable", action="store_true", default=False, help="also run the N/A tests")
    group.addoption("--conformance-results", default=None, metavar="PATH", help="write per-test results as JSON")


def pytest_configure(config: pytest.Config) -> None:
    global _run_na, _results_path
    _run_na = bool(config.getoption("run_not_applicable"))
    _results_path = config.getoption("conformance_results")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    for node in report.result:
        if isinstance(node, pytest.Item):
            _collected.add(node.nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = match(item.nodeid, _classification().not_applicable)
        if reason is not None:
            item.user_properties.append(("conformance_na", reason))
            if not _run_na:
                item.add_marker(pytest.mark.skip(reason=f"N/A: {reason}"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _storage.begin_test(item.nodeid)
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    try:
        return (yield)  # fixture finalizers first: they may still use a store
    finally:
        st = _storage.end_test()
        if st is not None:
            _built[item.nodeid] = len(st.stores)
            _storage.cleanup(st)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _reports.setdefault(report.nodeid, {"outcome": "passed", "message": ""})
    if report.outcome == "skipped" and report.when in ("setup", "call"):
        entry["outcome"] = "skipped"
        if isinstance(report.longrepr, tuple):
            entry["message"] = report.longrepr[2]
    elif report.outcome == "failed":
        entry["outcome"] = "failed" if report.when == "call" else "error"
        crash = getattr(report.longrepr, "reprcrash", None)
        entry["message"] = (crash.message if crash is not None else str(report.longrepr)).strip()
    for key, value in report.user_properties:
        if key == "conformance_na":
            entry["na"] = value


Categories = dict[str, list[tuple[str, dict[str, Any]]]]
_KEYS = (
    "passed",
    "passed_without_convostore",
    "failed_known",
    "failed_unclassified",
    "known_now_passing",
    "na_skipped",
    "na_failed",
    "na_passed",
    "skipped_other",
)


def _categorize() -> Categories:
    cats: Categories = {key: [] for key in _KEYS}
    known_table = _classification().known_differences
    for nodeid, e in sorted(_reports.items()):
        e["convostore_stores"] = _built.get(nodeid, 0)
        known = match(nodeid, known_table)
        if known is not None:
            e["known_difference"] = known
        if "na" in e:
            key = {"skipped": "na_skipped", "passed": "na_passed"}.get(e["outcome"], "na_failed")
        elif e["outcome"] == "skipped":
            key = "skipped_other"
        elif e["outcome"] == "passed":
            if known is not None:
                key = "known_now_passing"
            else:
                key = "passed" if e["convostore_stores"] else "passed_without_convostore"
        else:
            key = "failed_known" if known is not None else "failed_unclassified"
        cats[key].append((nodeid, e))
    return cats


def _stale_keys() -> list[str]:
    """Classification keys of a collected file that match no collected test."""
    files = {n.split("::", 1)[0] for n in _collected}
    c = _classification()
    return [
        p
        for table in (c.not_applicable, c.known_differences)
        for p in table
        if p.split("::", 1)[0] in files and not any(matches(n, p) for n in _collected)
    ]


_cats: Categories | None = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _cats
    _cats = _categorize()
    if (_cats["known_now_passing"] or _cats["skipped_other"] or _stale_keys()) and (
        session.exitstatus == pytest.ExitCode.OK
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _first_line(text: str | None, width: int) -> str:
    text = (text or "").strip()
    return text.splitlines()[0][:width] if text else ""


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    return f"{scheme}://{creds.split(':', 1)[0]}{at}{host}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    c = _classification()
    cats = _cats if _cats is not None else _categorize()
    w = terminalreporter.write_line
    terminalreporter.section(f"convostore {c.name} conformance summary")
    w(f"class under test: {c.adapter}")
    w(f"database: {_redacted(database_url())}; not-applicable tests run: {_run_na}")

    def block(title: str, key: str, show: str | None) -> None:
        w(f"{title}: {len(cats[key])}")
        if show is None:
            return
        for nodeid, e in cats[key]:
            w(f"  {nodeid}")
            if show != "name":
                w(f"      -> {_first_line(e.get(show) or e.get('message'), 300)}")

    block(f"passed, exercising {c.adapter_short}", "passed", None)
    block("passed, no convostore store built (framework-only code paths)", "passed_without_convostore", "name")
    block("FAILED, known behaviour differences", "failed_known", "known_difference")
    block("FAILED, unclassified (new? look at these)", "failed_unclassified", "message")
    block("known differences now PASSING (update classification.py)", "known_now_passing", "known_difference")
    w(f"skipped, not applicable: {len(cats['na_skipped'])}")
    by_reason: dict[str, list[str]] = {}
    for nodeid, e in cats["na_skipped"]:
        by_reason.setdefault(e["na"], []).append(nodeid)
    for reason, nodeids in by_reason.items():
        w(f"  * {reason}:")
        for nodeid in nodeids:
            w(f"      {nodeid}")
    if _run_na:
        block("not applicable, run anyway: failed", "na_failed", "na")
        block("not applicable, run anyway: passed", "na_passed", "na")
    block("skipped for other reasons (unexpected: classify them or fix the setup)", "skipped_other", "message")
    stale = _stale_keys()
    if stale:
        w(f"classification entries matching no collected test (update classification.py): {len(stale)}")
        for pattern in stale:
            w(f"  {pattern}")
    passed = sum(len(cats[k]) for k in ("passed", "passed_without_convostore", "known_now_passing", "na_passed"))
    failed = sum(len(cats[k]) for k in ("failed_known", "failed_unclassified", "na_failed"))
    skipped = len(cats["na_skipped"]) + len(cats["skipped_other"])
    w(
        f"{c.name} conformance: {passed} passed ({len(cats['passed'])} on convostore), {failed} failed, "
        f"{skipped} skipped ({len(cats['failed_known'])} known differences, "
        f"{len(cats['failed_unclassified'])} unclassified, {len(stale)} stale entries)"
    )
    if _results_path:
        Path(_results_path).parent.mkdir(parents=True, exist_ok=True)
        Path(_results_path).write_text(json.dumps(dict(sorted(_reports.items())), indent=1, default=str))
        w(f"per-test results: {_results_path}")
