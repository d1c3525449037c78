"""The pure parts of reports: the window and its interval, step functions per interval,
quantiles, the delay histogram's SQL, time parsing."""

from __future__ import annotations

import math
import sqlite3
from bisect import bisect_right
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balsam_dask import validate
from balsam_dask.errors import InvalidSpec
from balsam_dask.reports.records import DELAY_EDGES, Ranked, Sample, Totals, Window
from balsam_dask.reports.stats import quantile, summary
from balsam_dask.reports.timeline import averages, integral, steps
from balsam_dask.reports.window import MAX_AUTO_BUCKETS, choose_interval, window_for
from balsam_dask.store.reportsql import bisect_case

DAY = 86400


@pytest.mark.parametrize(("span", "interval"), [(0, 1), (100, 1), (121, 2), (3600, 30), (7 * 3600, 300),
                                                (30 * DAY, 21600), (31 * DAY, 43200), (400 * DAY, 604800)])  # fmt: skip
def test_the_interval_is_the_smallest_nice_one(span: float, interval: float) -> None:
    assert choose_interval(span) == interval
    assert span / interval <= MAX_AUTO_BUCKETS


def test_a_window_of_buckets() -> None:
    w = window_for(100.0, 125.0, 10)
    assert (w.buckets, w.bucket_start(2), w.bucket_length(1), w.bucket_length(2)) == (3, 120.0, 10.0, 5.0)
    assert window_for(5.0, 5.0).buckets == 1


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100), st.integers(1, 8)), max_size=20),
       st.sampled_from([1.0, 7.0, 10.0, 33.0]))  # fmt: skip
def test_step_averages_are_the_exact_mean_of_the_busy_level(runs: list[tuple[float, float, int]], dt: float) -> None:
    """Busy cores from intervals [s, e): each bucket's average is the overlap sum over its length."""
    w = window_for(0.0, 100.0, dt)
    changes = [(min(s, e), c) for s, e, c in runs] + [(max(s, e), -c) for s, e, c in runs]
    got = averages(w, steps(w, changes))
    for k in range(w.buckets):
        lo, hi = w.bucket_start(k), w.bucket_start(k) + w.bucket_length(k)
        want = sum(c * max(0.0, min(max(s, e), hi) - max(min(s, e), lo)) for s, e, c in runs) / (hi - lo)
        assert got[k] == pytest.approx(want, abs=1e-9)
    total = sum(c * abs(e - s) for s, e, c in runs)
    assert integral(w, steps(w, changes)) == pytest.approx(total, abs=1e-9)


def test_quantiles_interpolate_between_ranks() -> None:
    values = [5.0, 10.0, 10.0, 20.0, 30.0, 60.0, 70.0]
    s = Sample(Totals("", 7, sum(values), 5.0, 70.0, 0.0), tuple(Ranked("", i + 1, 7, v) for i, v in enumerate(values)))
    assert quantile(s, 0.5) == 20.0 and quantile(s, 0.9) == pytest.approx(64.0) and quantile(s, 1.0) == 70.0
    assert summary(s)["mean"] == pytest.approx(205 / 7)
    assert math.isnan(summary(Sample(None))["median"])


@given(st.lists(st.floats(-1.0, 2e6, allow_nan=False), max_size=30))
def test_the_histogram_sql_bisects_like_python(values: list[float]) -> None:
    conn = sqlite3.connect(":memory:")
    sql = bisect_case("?", DELAY_EDGES)
    for v in values:
        assert conn.execute(f"SELECT {sql}", [v] * sql.count("?")).fetchone()[0] == bisect_right(DELAY_EDGES, v)


def test_moments() -> None:
    now = 1_000_000.0
    assert validate.moment("since", None, now) is None
    assert validate.moment("since", 12.5, now) == 12.5
    assert validate.moment("since", "2h", now) == now - 7200
    assert validate.moment("since", "30m", now) == now - 1800
    assert validate.moment("since", "1700000000", now) == 1.7e9
    t = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
    assert validate.moment("since", t, now) == t.timestamp()
    assert validate.moment("since", "2026-11-23T10:00:00+00:00", now) == t.timestamp()
    for bad in ("yesterday", "", "inf", True, [1]):
        with pytest.raises(InvalidSpec, match=r"since=.* is invalid: give an ISO time, epoch seconds or an age"):
            validate.moment("since", bad, now)


def test_window_record_is_plain() -> None:
    assert Window(0.0, 10.0, 5.0, 2).bucket_length(1) == 5.0
