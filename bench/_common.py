"""What the benchmark's modes share: the console, number formats, spreads over runs."""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console

console = Console(highlight=False, width=max(240, Console().width))


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit.split()[0] in ("ms", "s"):  # latencies and durations (not "msg/s")
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"{value:,.0f}"


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and relative range ((max - min) / median) of one cell's runs."""
    median = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "median": median,
        "min": lo,
        "max": hi,
        "rel_range": (hi - lo) / median if median else None,
        "runs": values,
    }


def cell(values: list[float], unit: str) -> str:
    """A table cell: the median, then (over several runs) the relative range in brackets."""
    if not values:
        return "n/a"
    s = spread(values)
    text = fmt(s["median"], unit)
    if len(values) > 1 and s["rel_range"] is not None:
        text += f" [dim]({s['rel_range']:.0%})[/]"
    return text


def ratio_cell(values: list[float]) -> str:
    """A ratio's cell: the median, then (over several runs) min-max in brackets."""
    if not values:
        return ""
    text = f"{statistics.median(values):.2f}x"
    if len(values) > 1:
        text += f" [dim]({min(values):.2f}-{max(values):.2f})[/]"
    return text


def verdict(ratio: float, target: float, higher: bool) -> tuple[bool, str]:
    ok = ratio >= target if higher else ratio <= target
    return ok, f"{'>=' if higher else '<='} {target:g}x {'[green]met[/]' if ok else '[red]missed[/]'}"
