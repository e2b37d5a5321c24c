"""The benchmark suite runs end to end at a tiny size (no timing is asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_benchmark_suite_runs_at_tiny_size(database_url: str, tmp_path: Path) -> None:
    env = dict(os.environ, DATABASE_URL=database_url)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "tiny", "--runs", "1", "--out", str(tmp_path), "--no-pgbench"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = tmp_path.glob("bench-tiny-*.json")
    data = json.loads(report.read_text())
    systems = data["meta"]["systems"]
    assert {"floor", "convostore", "convostore-sdk", "seed"} <= set(systems)
    for name in systems:
        for workload in ("W1 sequential appends", "W3 batch", "W4 last 20 of long session", "W7 delete idle sessions"):
            assert data["medians"][name][workload] > 0, (name, workload)
    assert set(data["ratios_to_floor"]) >= {"W1 sequential appends", "W4 last 20 of long session"}
    assert list(tmp_path.glob("w2-concurrency-tiny-*.png"))
    assert "convostore / floor" in done.stdout
