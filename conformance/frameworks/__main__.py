"""``python -m conformance.frameworks adk|langchain [PYTEST ARGS...]``: the frameworks' own
tests against convostore's adapters (see ``conformance/README.md``).

* ``adk``: ADK's session-service contract suite from an adk-python source tree, taken from
  ``--adk-tests PATH``, else ``$CONVOSTORE_ADK_TESTS``, else ``.cache/adk-python-tests`` if
  present. google-adk's sdist on PyPI ships no tests, so without a tree the suite is skipped
  with a message saying so (exit status 77, :data:`SKIPPED`, which ``./dev test`` reports as
  a skipped stage).
* ``langchain``: the chat-history tests of the langchain-core and langchain-postgres source
  distributions, downloaded with pip (first run only), sha256-checked and extracted under
  ``.cache/framework-conformance/``; one pytest run per sdist, from its root.

Other arguments go to pytest. The database is ``$DATABASE_URL`` if set, else the embedded
PostgreSQL. The exit status is the worst of the pytest runs'.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from .._shared import sha256_file
from . import (
    ADK_DEFAULT_TESTS,
    ADK_RESULTS,
    ADK_TARGETS,
    ADK_TESTS_ENV,
    ADK_VERSION,
    LANGCHAIN_REQUIRED_MODULES,
    LANGCHAIN_SDISTS,
    PROJECT_ROOT,
    Sdist,
)

EMPTY_INI = ADK_RESULTS.parent / "empty-pytest.ini"

PER_TEST_TIMEOUT = 60
"""Seconds (pytest-timeout); a later ``--timeout`` argument overrides it."""


class SetupError(Exception):
    """The run cannot start; the message says why."""


def _say(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def _require_version(project: str, version: str) -> None:
    try:
        installed = importlib.metadata.version(project)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        raise SetupError(
            f"the tests are those of {project} {version}, but {installed or f'no {project}'} is installed "
            f"in {sys.prefix}: install convostore's `conformance` extra (pip install -e '.[dev,conformance]')"
        )


def _require_modules(names: Sequence[str]) -> None:
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise SetupError(
            f"missing test dependencies {missing} in {sys.prefix}: install convostore's `conformance` extra"
        )


def ensure_sdist(sdist: Sdist) -> Path:
    """The extracted, verified sdist root (downloaded with pip and extracted once)."""
    if (sdist.root / "tests").is_dir():
        return sdist.root
    tarball = sdist.cache_dir / f"{sdist.stem}.tar.gz"
    sdist.cache_dir.mkdir(parents=True, exist_ok=True)
    if not (tarball.is_file() and sha256_file(tarball) == sdist.sha256):
        _say(f"downloading the {sdist.project} {sdist.version} source distribution into {sdist.cache_dir}")
        with tempfile.TemporaryDirectory(dir=sdist.cache_dir) as tmp:
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
            command += ["--no-deps", "--no-binary", ":all:", "--dest", tmp, f"{sdist.project}=={sdist.version}"]
            result = subprocess.run(command, capture_output=True, text=True)
            downloaded = Path(tmp) / tarball.name
            if result.returncode != 0 or not downloaded.is_file():
                raise SetupError(f"pip download failed ({result.returncode}):\n{result.stderr.strip()}")
            actual = sha256_file(downloaded)
            if actual != sdist.sha256:
                raise SetupError(f"{tarball.name} has sha256 {actual}, expected {sdist.sha256}")
            os.replace(downloaded, tarball)
    _say(f"extracting {tarball.name}")
    with tempfile.TemporaryDirectory(dir=sdist.cache_dir) as tmp, tarfile.open(tarball) as archive:
        archive.extractall(tmp, filter="data")  # refuses links and paths out of tmp
        extracted = Path(tmp) / sdist.stem
        if not (extracted / "tests").is_dir():
            raise SetupError(f"{tarball.name} has no {sdist.stem}/tests")
        if sdist.root.exists():
            shutil.rmtree(sdist.root)
        os.replace(extracted, sdist.root)
    return sdist.root


def adk_tests_root(args: list[str]) -> tuple[Path | None, str]:
    """The adk-python tree named by ``--adk-tests`` (removed from *args*), the environment or
    the default, and where it came from."""
    for i, arg in enumerate(args):
        if arg == "--adk-tests" and i + 1 < len(args):
            value = args[i + 1]
            del args[i : i + 2]
            return Path(value), "--adk-tests"
        if arg.startswith("--adk-tests="):
            del args[i]
            return Path(arg.split("=", 1)[1]), "--adk-tests"
    if os.environ.get(ADK_TESTS_ENV):
        return Path(os.environ[ADK_TESTS_ENV]), f"${ADK_TESTS_ENV}"
    if ADK_DEFAULT_TESTS.is_dir():
        return ADK_DEFAULT_TESTS, "the default folder"
    return None, ""


def database_url() -> tuple[str, str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, "$DATABASE_URL"
    from convostore.embedded import embedded_url

    return embedded_url(), "the embedded PostgreSQL"


def _pytest(
    plugin: str, root: Path, targets: Sequence[str], results: Path, args: Sequence[str], env: dict[str, str]
) -> int:
    names_tests = any(not a.startswith("-") and a.startswith("tests/") for a in args)
    command = [sys.executable, "-m", "pytest", "-p", plugin, "-p", "no:cacheprovider", "-q", "--no-header"]
    if not any((root / name).is_file() for name in ("pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini")):
        # A bare test tree: without a config file of its own, pytest would take convostore's.
        EMPTY_INI.parent.mkdir(parents=True, exist_ok=True)
        EMPTY_INI.write_text("[pytest]\n")
        command += ["-c", str(EMPTY_INI)]
    command += ["--rootdir", str(root), "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"]
    command += [f"--timeout={PER_TEST_TIMEOUT}", f"--conformance-results={results}"]
    command += [*([] if names_tests else targets), *args]
    _say(f"running from {root}: pytest {shlex.join(command[3:])}")
    return subprocess.run(command, cwd=root, env=env).returncode


def _env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CONFORMANCE_DATABASE_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


SKIPPED = 77
"""The exit status of a run that found no tests to run (automake's and meson's "skipped")."""


def run_adk(args: list[str]) -> int:
    root, source = adk_tests_root(args)
    if root is None or not (root / ADK_TARGETS[0]).is_file():
        where = f"{root} (from {source})" if root is not None else "nowhere"
        print(
            f"conformance.frameworks adk: SKIPPED: no adk-python test tree: looked {where} for {ADK_TARGETS[0]}.\n"
            f"google-adk {ADK_VERSION}'s sdist on PyPI ships no tests, so they come from a checkout of "
            f"github.com/google/adk-python at v{ADK_VERSION}: name its root with --adk-tests PATH or "
            f"${ADK_TESTS_ENV} (see conformance/README.md).",
            file=sys.stderr,
        )
        return SKIPPED
    _require_version("google-adk", ADK_VERSION)
    _require_modules(["pytest_timeout", "pytest_asyncio", "sqlalchemy", "aiosqlite"])
    url, db_source = database_url()
    _say(f"ADK tests: {root} (from {source}); database: {db_source}")
    return _pytest("conformance.frameworks.adk_plugin", root.resolve(), ADK_TARGETS, ADK_RESULTS, args, _env(url))


def run_langchain(args: list[str]) -> int:
    _require_modules(LANGCHAIN_REQUIRED_MODULES)
    url, db_source = database_url()
    _say(f"database: {db_source}")
    env = _env(url)
    # langchain-postgres' test helpers open a psycopg connection from POSTGRES_*, which they
    # put into a URL; the stand-in ignores it, but it must open: point it at the same server,
    # a unix socket directory (the embedded server's ?host=...) percent-encoded as libpq reads it.
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    env.update(
        POSTGRES_USER=parts.username or "postgres",
        POSTGRES_PASSWORD=parts.password or "",
        POSTGRES_HOST=quote(host, safe="") if host.startswith("/") else host,
        POSTGRES_PORT=query.get("port", [str(parts.port or 5432)])[0],
        POSTGRES_DB=parts.path.lstrip("/") or "postgres",
    )
    statuses = []
    for sdist in LANGCHAIN_SDISTS:
        _require_version(sdist.project, sdist.version)
        root = ensure_sdist(sdist)
        plugin = "conformance.frameworks.langchain_plugin"
        statuses.append(_pytest(plugin, root, sdist.targets, sdist.results, args, env))
    return max(statuses)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("adk", "langchain"):
        print(
            "usage: python -m conformance.frameworks adk|langchain [--adk-tests PATH] [PYTEST ARGS...]", file=sys.stderr
        )
        return 2
    started = time.monotonic()
    try:
        status = run_adk(args[1:]) if args[0] == "adk" else run_langchain(args[1:])
    except SetupError as exc:
        print(f"conformance.frameworks: {exc}", file=sys.stderr)
        return 2
    _say(f"{args[0]} conformance took {time.monotonic() - started:.1f} s; exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
