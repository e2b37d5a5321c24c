"""``python -m conformance [PYTEST ARGS...]``: the Agents SDK's session tests against convostore.

Run from the project root with the project's venv (``.venv/bin/python -m conformance``). It

1. checks that the installed openai-agents is the release whose tests are run;
2. downloads that release's source distribution with pip (first run only), checks its sha256
   and extracts it into ``.cache/openai-agents-<version>/``;
3. runs pytest from the sdist root (so the SDK's own pytest configuration and conftest apply)
   with the plugin :mod:`conformance.plugin`, on ``tests/memory`` and
   ``tests/extensions/memory`` unless the arguments name test paths (``tests/...``); the
   other arguments are passed to pytest as they are.

The database is ``$DATABASE_URL`` if set, else the embedded PostgreSQL. The exit status is
pytest's: non-zero when a test fails, a known difference now passes, or a classification
entry matches no test.
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

from . import (
    CACHE_DIR,
    DEFAULT_TARGETS,
    PROJECT_ROOT,
    REQUIRED_MODULES,
    RESULTS_PATH,
    SDIST_NAME,
    SDIST_ROOT,
    SDIST_SHA256,
    SDK_VERSION,
)
from ._shared import sha256_file

PER_TEST_TIMEOUT = 30
"""Seconds (pytest-timeout); a later ``--timeout`` argument overrides it."""


class SetupError(Exception):
    """The run cannot start; the message says why."""


def _say(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def check_dependencies() -> None:
    """The installed openai-agents is :data:`SDK_VERSION`, and the tests' optional dependencies are there."""
    try:
        installed = importlib.metadata.version("openai-agents")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != SDK_VERSION:
        raise SetupError(
            f"the tests are those of openai-agents {SDK_VERSION}, but {installed or 'no openai-agents'} is "
            f"installed in {sys.prefix}: install convostore's `conformance` extra (pip install -e '.[dev,conformance]')"
        )
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise SetupError(
            f"missing test dependencies {missing} in {sys.prefix}: install convostore's `conformance` extra "
            "(pip install -e '.[dev,conformance]')"
        )


def download_sdist() -> Path:
    """The verified sdist tarball in the cache, downloaded with pip if missing."""
    tarball = CACHE_DIR / f"{SDIST_NAME}.tar.gz"
    if tarball.is_file() and sha256_file(tarball) == SDIST_SHA256:
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    _say(f"downloading the openai-agents {SDK_VERSION} source distribution into {CACHE_DIR}")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            tmp,
            f"openai-agents=={SDK_VERSION}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(tmp) / tarball.name
        if result.returncode != 0 or not downloaded.is_file():
            raise SetupError(f"pip download failed ({result.returncode}):\n{result.stderr.strip()}")
        actual = sha256_file(downloaded)
        if actual != SDIST_SHA256:
            raise SetupError(f"{tarball.name} has sha256 {actual}, expected {SDIST_SHA256}")
        os.replace(downloaded, tarball)
    return tarball


def ensure_sdist() -> Path:
    """The extracted sdist root (extracted once; a partial extraction is never left as it)."""
    if (SDIST_ROOT / "tests" / "conftest.py").is_file():
        return SDIST_ROOT
    tarball = download_sdist()
    _say(f"extracting {tarball.name}")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp, tarfile.open(tarball) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(tmp, filter="data")
        else:  # Python < 3.11.4: check the members ourselves
            root = Path(tmp).resolve()
            for member in archive.getmembers():
                target = (root / member.name).resolve()
                if not target.is_relative_to(root) or member.issym() or member.islnk():
                    raise SetupError(f"refusing to extract {member.name!r} from {tarball.name}")
            archive.extractall(tmp)
        extracted = Path(tmp) / SDIST_NAME
        if not (extracted / "tests" / "conftest.py").is_file():
            raise SetupError(f"{tarball.name} has no {SDIST_NAME}/tests/conftest.py")
        if SDIST_ROOT.exists():
            shutil.rmtree(SDIST_ROOT)
        os.replace(extracted, SDIST_ROOT)
    return SDIST_ROOT


def database_url() -> tuple[str, str]:
    """The URL to test against, and where it came from."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, "$DATABASE_URL"
    from convostore.embedded import embedded_url

    return embedded_url(), "the embedded PostgreSQL"


def pytest_command(args: Sequence[str]) -> list[str]:
    names_tests = any(not a.startswith("-") and a.startswith("tests/") for a in args)
    targets = [] if names_tests else list(DEFAULT_TARGETS)
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "conformance.plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "--no-header",
        f"--timeout={PER_TEST_TIMEOUT}",
        f"--conformance-results={RESULTS_PATH}",
        *targets,
        *args,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        check_dependencies()
        root = ensure_sdist()
        url, source = database_url()
    except SetupError as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 2
    _say(f"database: {source}")
    env = dict(os.environ)
    env["CONFORMANCE_DATABASE_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    command = pytest_command(args)
    _say(f"running from {root}: pytest {shlex.join(command[3:])}")
    status = subprocess.run(command, cwd=root, env=env).returncode
    _say(f"conformance run took {time.monotonic() - started:.1f} s; exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
