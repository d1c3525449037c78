"""What a report covers and the aggregate rows the store answers with. Pure: plain records.

The store aggregates in SQL (``store/reports.py``); the computations here
(``timeline``, ``stats``, ``capacity``) turn these rows into tables. Times are epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

#: The quantiles every distribution reports (the median and the 90th percentile).
QUANTILES = (0.5, 0.9)
#: Histogram edges of run delays (seconds): 1, 2, 5 per decade from 1 ms to 11 days.
DELAY_EDGES: tuple[float, ...] = (*(m * 10.0**e for e in range(-3, 6) for m in (1, 2, 5)), 1e6)


@dataclass(frozen=True)
class ReportQuery:
    """Which tasks (all of ``tags``, ``app``, ``name``: a name or glob) over which time window
    (``since``/``until``: epoch seconds, None for the run's own span), in buckets of
    ``interval`` seconds (None: chosen from the span)."""

    since: float | None = None
    until: float | None = None
    tags: tuple[tuple[str, str], ...] = ()
    app: str | None = None
    name: str | None = None
    interval: float | None = None

    @property
    def filters_tasks(self) -> bool:
        """Whether only some tasks are selected (else every task's events count)."""
        return bool(self.tags) or self.app is not None or self.name is not None


@dataclass(frozen=True)
class Window:
    """The report's time window ``[start, end]`` cut in ``buckets`` intervals from ``start``
    (the last one may end after ``end``)."""

    start: float
    end: float
    interval: float
    buckets: int

    def bucket_start(self, k: int) -> float:
        return self.start + k * self.interval

    def bucket_length(self, k: int) -> float:
        """How much of bucket ``k`` lies in the window."""
        return max(0.0, min(self.interval, self.end - self.bucket_start(k))) if k == self.buckets - 1 else self.interval


class StateCount(NamedTuple):
    """Tasks in one state now."""

    state: str
    tasks: int


class AttemptCount(NamedTuple):
    """Tasks that made ``attempts`` attempts (0: never ran), how many of them ended in each
    final state, and when the first was created and the last changed."""

    attempts: int
    tasks: int
    finished: int
    failed: int
    killed: int
    first_created: float
    last_updated: float


class EndCount(NamedTuple):
    """Tasks that reached ``state`` (FINISHED, FAILED, KILLED) in bucket ``bucket``."""

    bucket: int
    state: str
    tasks: int


class StepSums(NamedTuple):
    """The changes of a step function (busy cores...) at times ``x`` inside one bucket: the sum
    of the changes ``w``, and of ``w * (bucket end - x)`` (the bucket's integral follows)."""

    bucket: int
    change: float
    area: float


class Ranked(NamedTuple):
    """A value of a sorted sample of ``n`` at rank ``rank`` (1-based), near a quantile."""

    group: str
    rank: int
    n: int
    value: float


class BinCount(NamedTuple):
    """How many values of a sample fall in histogram bin ``bin`` (see ``DELAY_EDGES``)."""

    group: str
    bin: int
    values: int


class Totals(NamedTuple):
    """A sample's size, sum, smallest and largest value, and core-seconds (durations)."""

    group: str
    n: int
    total: float
    low: float
    high: float
    core_seconds: float


class ErrorGroup(NamedTuple):
    """Events of one kind (RUN_ERROR, RUN_TIMEOUT, a lost attempt, FAILED) with one message."""

    state: str
    message: str | None
    events: int
    tasks: int
    examples: tuple[int, ...]


class AllocationSpan(NamedTuple):
    """An allocation's life: queued from ``submitted``, holding ``nodes`` from ``started``
    (less each node released at the times in ``released``) until ``ended``."""

    id: int
    system: str
    scheduler_id: str | None
    state: str
    nodes: int
    cores_per_node: int | None
    gpus_per_node: int | None
    submitted: float | None
    started: float | None
    ended: float | None
    released: tuple[float, ...]


@dataclass(frozen=True)
class Sample:
    """A distribution as the store returns it: totals, the values at the ranks around each
    quantile, and the counts per histogram bin."""

    totals: Totals | None
    ranked: tuple[Ranked, ...] = ()
    bins: tuple[BinCount, ...] = ()


@dataclass(frozen=True)
class ReportData:
    """Everything a report is computed from (what ``Store.report_data`` returns)."""

    query: ReportQuery
    window: Window
    states: tuple[StateCount, ...]
    attempts: tuple[AttemptCount, ...]
    ends: tuple[EndCount, ...]
    busy: dict[str, tuple[StepSums, ...]]  # "cores", "gpus", "nodes"
    delays: Sample
    delay_edges: tuple[float, ...]
    durations: dict[str, Sample]  # by label (app, function, name or key prefix)
    errors: tuple[ErrorGroup, ...]
    allocations: tuple[AllocationSpan, ...]
    store: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
