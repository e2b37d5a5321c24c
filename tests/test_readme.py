"""The README's examples run as written: every Python block in order, in one namespace (top-level
await allowed), and every command of its console blocks, against a schema of the test's own."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    return [body for lang, body in _BLOCK.findall(README.read_text()) if lang == language]


def test_the_readme_has_examples() -> None:
    assert len(blocks("python")) >= 10
    assert blocks("console")


async def test_every_python_block_runs(database_url: str, schema_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CONVOSTORE_SCHEMA", schema_name)
    namespace: dict[str, Any] = {"__name__": "readme"}
    for number, source in enumerate(blocks("python"), start=1):
        code: CodeType = compile(
            source, f"README.md python block {number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        result = eval(code, namespace)
        if result is not None:  # a coroutine: the block awaits something
            await result
    run_commands(database_url, schema_name)


def run_commands(database_url: str, schema_name: str) -> None:
    """Each ``$ convostore ...`` line of the console blocks, on the data the Python blocks left."""
    env = dict(os.environ, DATABASE_URL=database_url, CONVOSTORE_SCHEMA=schema_name)
    commands = [line[2:] for body in blocks("console") for line in body.splitlines() if line.startswith("$ ")]
    assert commands
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "convostore", command
        done = subprocess.run(
            [sys.executable, "-m", "convostore", *argv[1:]], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
