"""Timelines over a report's window: the interval, tasks ended per interval (throughput), and
step functions (busy cores, allocated nodes...) averaged per interval. Pure.

A step function comes as its changes summed per bucket (:class:`~.records.StepSums`): the level
at a bucket's start is the sum of the changes before it, and the bucket's integral is that
level times its length plus the bucket's ``area``. Exact, whatever the number of tasks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from balsam_dask.reports.records import EndCount, StepSums, Window

END_STATES = ("FINISHED", "FAILED", "KILLED")


def clamp(window: Window, sums: Iterable[StepSums]) -> dict[int, tuple[float, float]]:
    """Changes per bucket, those at or after the window's last bucket moved into it (a change at
    the window's very end then adds nothing to the last bucket's integral)."""
    out: dict[int, tuple[float, float]] = {}
    last = window.buckets - 1
    for s in sums:
        b, change, area = s.bucket, s.change, s.area
        if b > last:
            area -= change * (b - last) * window.interval
            b = last
        c0, a0 = out.get(b, (0.0, 0.0))
        out[b] = (c0 + change, a0 + area)
    return out


def averages(window: Window, sums: Iterable[StepSums]) -> list[float]:
    """The step function's mean over each bucket (its part in the window)."""
    per = clamp(window, sums)
    level = 0.0
    out = []
    for k in range(window.buckets):
        change, area = per.get(k, (0.0, 0.0))
        length = window.bucket_length(k)
        integral = level * length + area - (window.interval - length) * change
        out.append(integral / length if length > 0 else level + change)
        level += change
    return out


def integral(window: Window, sums: Iterable[StepSums]) -> float:
    """The step function's integral over the window (e.g. busy core-seconds)."""
    avgs = averages(window, sums)
    return sum(a * window.bucket_length(k) for k, a in enumerate(avgs))


def steps(window: Window, changes: Iterable[tuple[float, float]]) -> list[StepSums]:
    """Changes ``(time, amount)`` summed per bucket, as the store sums them (times before the
    window count at its start; after it, not at all)."""
    per: dict[int, tuple[float, float]] = {}
    for x, w in changes:
        if x > window.end:
            continue
        x = max(x, window.start)
        b = int((x - window.start) // window.interval)
        end = window.start + (b + 1) * window.interval
        c0, a0 = per.get(b, (0.0, 0.0))
        per[b] = (c0 + w, a0 + w * (end - x))
    return [StepSums(b, c, a) for b, (c, a) in sorted(per.items())]


def bucket_times(window: Window) -> pd.DatetimeIndex:
    starts = [window.bucket_start(k) for k in range(window.buckets)]
    return pd.DatetimeIndex(pd.to_datetime(starts, unit="s", utc=True), name="start")


def throughput(window: Window, ends: Sequence[EndCount]) -> pd.DataFrame:
    """Tasks ended per interval by final state, their total, the finished per minute (over the
    interval) and the cumulative counts; indexed by the interval's start (UTC)."""
    counts = {s: [0] * window.buckets for s in END_STATES}
    last = window.buckets - 1
    for e in ends:
        if e.state in counts:
            counts[e.state][min(max(e.bucket, 0), last)] += e.tasks
    df = pd.DataFrame({s.lower(): counts[s] for s in END_STATES}, index=bucket_times(window))
    df["ended"] = df.sum(axis=1)
    df["per_minute"] = df["finished"] * 60.0 / window.interval
    df["cumulative_finished"] = df["finished"].cumsum()
    df["cumulative_ended"] = df["ended"].cumsum()
    return df


def utilization(window: Window, busy: Mapping[str, Sequence[StepSums]],
                capacity: Mapping[str, Sequence[StepSums] | None]) -> pd.DataFrame:  # fmt: skip
    """Mean busy and allocated cores, GPUs and nodes per interval, and the busy share of each
    (NaN where nothing was allocated or the capacity is not recorded)."""
    df = pd.DataFrame(index=bucket_times(window))
    for what in ("cores", "gpus", "nodes"):
        df[f"busy_{what}"] = averages(window, busy.get(what, ()))
        cap = capacity.get(what)
        df[f"{what}"] = averages(window, cap) if cap is not None else math.nan
        df[f"{what}_used"] = df[f"busy_{what}"] / df[what].where(df[what] > 0)
    return df
