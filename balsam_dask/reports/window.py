"""A report's time window and the interval it is cut in. Pure (no pandas: the store imports it)."""

from __future__ import annotations

import math

from balsam_dask import validate
from balsam_dask.reports.records import Window

#: Intervals a window is cut in when none is given (seconds): the smallest that makes at most
#: ``MAX_AUTO_BUCKETS`` of them.
NICE_INTERVALS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
                  172800, 604800)  # fmt: skip
MAX_AUTO_BUCKETS = 120
#: An interval given must not cut the window in more buckets than this.
MAX_BUCKETS = 100_000


def choose_interval(span: float) -> float:
    """The smallest nice interval that cuts ``span`` seconds in at most ``MAX_AUTO_BUCKETS``."""
    for step in NICE_INTERVALS:
        if span / step <= MAX_AUTO_BUCKETS:
            return float(step)
    return float(NICE_INTERVALS[-1] * math.ceil(span / NICE_INTERVALS[-1] / MAX_AUTO_BUCKETS))


def window_for(start: float, end: float, interval: float | None = None) -> Window:
    """The window ``[start, end]`` cut in ``interval`` seconds (chosen from the span if None)."""
    span = max(end - start, 0.0)
    if interval is None:
        interval = choose_interval(span)
    validate.number("interval", interval, "interval=60 (seconds)", above=0)
    buckets = max(1, math.ceil(span / interval))
    if buckets > MAX_BUCKETS:
        want = (
            f"at least {span / MAX_BUCKETS:.3g} seconds for this window ({span:.0f} s: at most {MAX_BUCKETS} intervals)"
        )
        raise validate.invalid("interval", interval, want, f"interval={choose_interval(span):g}")
    return Window(start, end, float(interval), buckets)
