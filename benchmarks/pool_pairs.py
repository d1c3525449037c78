"""Pool the paired ratios of several ``throughput.py`` runs: each repetition's (b) or (c) over
that repetition's (a), read from the runs' ``rep N:`` lines.

    python benchmarks/throughput.py --tasks 2000 --repeat 80 --skip-placed --latency-samples 0 > run1.log
    python benchmarks/throughput.py --tasks 2000 --repeat 80 --skip-placed --latency-samples 0 > run2.log
    python benchmarks/pool_pairs.py run1.log run2.log

One run's repetitions vary by 8-16% here whatever their size, so the interval of a paired
median narrows only with their number; this gives the median of all of them and its 95%
bootstrap interval (throughput.interval). Ends with one JSON line of figures.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections.abc import Iterable

from throughput import interval

_RATE = re.compile(r"(\w+)=(\d+(?:\.\d+)?)/s")


def paired_ratios(lines: Iterable[str]) -> dict[str, list[float]]:
    """Each configuration's ratios to (a), one per ``rep N:`` line that has an (a)."""
    out: dict[str, list[float]] = {}
    for line in lines:
        if not line.startswith("rep "):
            continue
        rates = {k: float(v) for k, v in _RATE.findall(line)}
        a = rates.pop("a", None)
        if not a:
            continue
        for name, r in rates.items():
            out.setdefault(name, []).append(r / a)
    return out


def main(argv: list[str]) -> dict[str, float]:
    if not argv:
        raise SystemExit("usage: python benchmarks/pool_pairs.py RUN.log [RUN.log ...] (throughput.py's output)")
    pooled: dict[str, list[float]] = {}
    for path in argv:
        with open(path) as f:
            for name, ratios in paired_ratios(f).items():
                pooled.setdefault(name, []).extend(ratios)
    if not pooled:
        raise SystemExit(f"no 'rep N: a=.../s, ...' lines in {', '.join(argv)}: give throughput.py's output")
    figures: dict[str, float] = {}
    for name, ratios in pooled.items():
        low, high = interval(ratios)
        figures[f"pairs_{name}"] = len(ratios)
        figures[f"paired_{name}_over_a"] = round(statistics.median(ratios), 3)
        figures[f"paired_{name}_over_a_ci95_low"] = round(low, 3)
        figures[f"paired_{name}_over_a_ci95_high"] = round(high, 3)
        figures[f"paired_{name}_over_a_sd"] = round(statistics.pstdev(ratios), 3)
    for k, v in figures.items():
        print(f"{k:40s} {v}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
