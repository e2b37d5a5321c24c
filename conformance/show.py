"""``python -m conformance.show [SUBSTRING] [--results PATH]``: the failures of the last run.

Reads the per-test results the last ``python -m conformance`` wrote and prints each failed or
erroring test whose node id contains SUBSTRING, with the first line of its message.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import RESULTS_PATH


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.show", description=__doc__)
    parser.add_argument("substring", nargs="?", default="", help="only node ids containing this")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="results file (default: %(default)s)")
    parser.add_argument("--all", action="store_true", help="every test, not only failures")
    options = parser.parse_args(argv)
    try:
        results: dict[str, dict[str, Any]] = json.loads(options.results.read_text())
    except FileNotFoundError:
        print(f"no results at {options.results}: run python -m conformance first", file=sys.stderr)
        return 2
    for nodeid, entry in results.items():
        if options.substring not in nodeid:
            continue
        if not options.all and entry["outcome"] not in ("failed", "error"):
            continue
        message = (entry.get("message") or "").strip()
        first = message.splitlines()[0][:260] if message else ""
        print(f"{entry['outcome'].upper():8} {nodeid}  [PostgresSessions: {entry.get('postgres_sessions', 0)}]")
        if first:
            print(f"    {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
