"""Figures from what a phase measured: rates, percentiles, the table."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank), or NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 of seconds, in milliseconds."""
    return {f"p{q}": round(percentile(values, q) * 1000, 2) for q in (50, 95, 99)}


def ratio(a: float, b: float) -> float:
    """a ÷ b, NaN when b is zero."""
    return round(a / b, 3) if b else math.nan


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
