"""Distributions and counts: run delays, durations by name, attempts, states, errors. Pure.

Quantiles are exact: the store returns the values at the ranks around each quantile of the
sorted sample, and :func:`quantile` interpolates between them (as ``numpy.quantile`` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from balsam_dask.reports.records import QUANTILES, AttemptCount, ErrorGroup, Sample, StateCount


def quantile(sample: Sample, p: float, group: str | None = None) -> float:
    """The ``p`` quantile (linear interpolation between closest ranks); NaN for no values."""
    rows = [r for r in sample.ranked if group is None or r.group == group]
    if not rows:
        return math.nan
    n = rows[0].n
    pos = (n - 1) * p
    lo, hi = math.floor(pos), math.ceil(pos)
    at = {r.rank - 1: r.value for r in rows}
    if lo not in at or hi not in at:
        return math.nan
    return at[lo] + (pos - lo) * (at[hi] - at[lo])


def summary(sample: Sample) -> dict[str, float]:
    """count, mean, min, median, p90 and max of a sample (NaN when it is empty)."""
    t = sample.totals
    n = t.n if t is not None else 0
    out = {"count": float(n), "mean": t.total / n if t is not None and n else math.nan,
           "min": t.low if t is not None and n else math.nan}  # fmt: skip
    for p in QUANTILES:
        out[f"p{round(p * 100)}" if p != 0.5 else "median"] = quantile(sample, p) if n else math.nan
    out["max"] = t.high if t is not None and n else math.nan
    return out


def histogram(sample: Sample, edges: Sequence[float]) -> pd.DataFrame:
    """Values per bin ``[low, high)`` (bin 0 is below the first edge, the last above the last
    edge), from the first to the last bin that holds any."""
    counts: dict[int, int] = {}
    for b in sample.bins:
        counts[b.bin] = counts.get(b.bin, 0) + b.values
    rows = []
    if counts:
        for k in range(min(counts), max(counts) + 1):
            low = edges[k - 1] if k > 0 else -math.inf
            high = edges[k] if k < len(edges) else math.inf
            rows.append({"low": low, "high": high, "tasks": counts.get(k, 0)})
    return pd.DataFrame(rows, columns=["low", "high", "tasks"])


def durations(samples: dict[str, Sample]) -> pd.DataFrame:
    """Run durations by label: runs, mean, min and max (seconds), hours and the core-hours they
    used; the longest total first."""
    rows = [{"label": label, "runs": t.n, "mean_s": t.total / t.n, "min_s": t.low, "max_s": t.high,
             "hours": t.total / 3600.0, "core_hours": t.core_seconds / 3600.0}
            for label, s in samples.items() if (t := s.totals) is not None and t.n]  # fmt: skip
    df = pd.DataFrame(rows, columns=["label", "runs", "mean_s", "min_s", "max_s", "hours", "core_hours"])
    return df.sort_values(["hours", "label"], ascending=[False, True]).set_index("label")


def attempts(counts: Sequence[AttemptCount]) -> pd.DataFrame:
    """Tasks by the number of attempts they made (0: never ran), by final state (``other``:
    not ended), and the retries that makes (attempts after the first)."""
    cols = ["finished", "failed", "killed", "other", "tasks", "retries"]
    rows = {c.attempts: [c.finished, c.failed, c.killed, c.tasks - c.finished - c.failed - c.killed, c.tasks,
                         c.tasks * max(c.attempts - 1, 0)] for c in counts}  # fmt: skip
    df = pd.DataFrame.from_dict(rows, orient="index", columns=cols).sort_index().astype(int)
    df.index.name = "attempts"
    return df


def states(counts: Sequence[StateCount], order: Sequence[str]) -> pd.DataFrame:
    """Tasks by their current state, in the state machine's order."""
    by = {c.state: c.tasks for c in counts}
    known = [s for s in order if s in by] + sorted(s for s in by if s not in order)
    return pd.DataFrame({"tasks": [by[s] for s in known]}, index=pd.Index(known, name="state")).astype(int)


def errors(groups: Sequence[ErrorGroup]) -> pd.DataFrame:
    """Failed, timed-out and lost attempts and failed tasks grouped by message, the most events
    first, with example task ids."""
    rows = [{"state": g.state, "message": g.message if g.message is not None else "(no message)", "events": g.events,
             "tasks": g.tasks, "examples": list(g.examples)} for g in groups]  # fmt: skip
    df = pd.DataFrame(rows, columns=["state", "message", "events", "tasks", "examples"])
    return df.sort_values(["events", "state", "message"], ascending=[False, True, True], ignore_index=True)
