"""Reports of what ran: ``Store.report`` (``balsam_dask.report`` opens a store and calls it).

Statements aggregate in SQL (``store/reportsql.py``): the tasks' span (which gives the window),
then on three connections at once the runs (busy resources per interval, durations); the ends
and errors, then the tasks by state and attempts; the nodes' busy stretches (kept by the writer,
``store/busy.py``) and the delays; the allocations are read as they are (a run has few). The
pure computations of ``balsam_dask.reports`` turn the rows into DataFrames.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, or_, text

from balsam_dask import validate
from balsam_dask.reports.records import (
    DELAY_EDGES,
    QUANTILES,
    AllocationSpan,
    AttemptCount,
    BinCount,
    EndCount,
    ErrorGroup,
    Ranked,
    ReportData,
    ReportQuery,
    Sample,
    StateCount,
    StepSums,
    Totals,
    Window,
)
from balsam_dask.reports.timeline import steps
from balsam_dask.reports.window import window_for
from balsam_dask.spec import parse_duration, validate_tags
from balsam_dask.store import queries as Q
from balsam_dask.store.models import allocations_t
from balsam_dask.store.reportsql import (
    MAX_LABELS,
    Dialect,
    delay_ranks_sql,
    delays_sql,
    ends_sql,
    islands_sql,
    runs_sql,
    span_sql,
    tasks_sql,
)
from balsam_dask.store.states import ALL_STATES

if TYPE_CHECKING:
    from balsam_dask.reports.frames import Report


def report_query(*, since: Any = None, until: Any = None, tags: Mapping[str, Any] | None = None, app: Any = None,
                 name: Any = None, interval: Any = None, now: float | None = None) -> ReportQuery:  # fmt: skip
    """A checked :class:`ReportQuery`: each bad value raises one error naming it."""
    now = time.time() if now is None else now
    start = validate.moment("since", since, now)
    end = validate.moment("until", until, now)
    if start is not None and end is not None and end <= start:
        raise validate.invalid("until", until, f"a time after since={since!r}", "since='2h', until='1h'")
    return ReportQuery(
        since=start, until=end, tags=validate_tags(tags),
        app=None if app is None else validate.text("app", app, "app='simulate'"),
        name=None if name is None else validate.text("name", name, "name='fit-*'"),
        interval=parse_duration("interval", interval),
    )  # fmt: skip


def allocation_span(row: Any) -> AllocationSpan:
    a = Q.allocation_record(row)
    info = a.info or {}
    released = tuple(float(r["at"]) for r in info.get("released") or () if isinstance(r, dict) and "at" in r)
    cores, gpus = info.get("cores_per_node"), info.get("gpus_per_node")
    return AllocationSpan(a.id, a.system, a.scheduler_id, a.state, a.nodes, cores if isinstance(cores, int) else None,
                          gpus if isinstance(gpus, int) else None, a.submitted_at, a.started_at, a.ended_at,
                          released)  # fmt: skip


def read_allocations(conn: Connection, t0: float, t1: float) -> tuple[AllocationSpan, ...]:
    """The allocations that lived in ``[t0, t1]`` (submitted by its end, not ended before its start)."""
    c = allocations_t.c
    q = Q.allocations_select.where(
        or_(c.submitted_at.is_(None), c.submitted_at <= t1), or_(c.ended_at.is_(None), c.ended_at >= t0)
    )
    return tuple(allocation_span(r) for r in conn.execute(q))


def delays_of(conn: Connection, q: ReportQuery, d: Dialect, bounds: dict[str, float]) -> Sample:
    """The delays' sample: totals, histogram, and the two values around each quantile (``k =
    floor((n - 1) * p)``: at ranks k + 1 and k + 2), read from the bins that hold those ranks."""
    sql, params = delays_sql(q, d, DELAY_EDGES)
    rows = list(conn.execute(text(sql), {**params, **bounds}))
    totals = next((Totals("", int(r[2]), r[4] or 0.0, r[5] or 0.0, r[6] or 0.0, 0.0) for r in rows if r[0] == "delays"),
                  None)  # fmt: skip
    bins = tuple(sorted(BinCount("", int(r[2]), int(r[3])) for r in rows if r[0] == "bin"))
    if totals is None or not totals.n:
        return Sample(None, (), bins)
    picks: dict[str, Any] = {}
    wanted = []  # per quantile read: k
    for i, p in enumerate(QUANTILES):
        k = math.floor((totals.n - 1) * p)
        below = 0
        for j, b in enumerate(bins):  # the bin that holds rank k + 1, and the one of rank k + 2
            if below + b.values > k:
                last = bins[j + 1] if below + b.values == k + 1 and j + 1 < len(bins) else b
                picks[f"lo{i}"] = DELAY_EDGES[b.bin - 1] if b.bin > 0 else -math.inf
                picks[f"hi{i}"] = DELAY_EDGES[last.bin] if last.bin < len(DELAY_EDGES) else math.inf
                picks[f"k{i}"] = k - below
                wanted.append(k)
                break
            below += b.values
    sql, params = delay_ranks_sql(q, d, len(wanted))
    found: dict[int, list[float]] = {}
    for i, v in conn.execute(text(sql), {**params, **picks, **bounds}):
        found.setdefault(int(i), []).append(float(v))
    ranked = [Ranked("", k + 1 + j, totals.n, v) for i, k in enumerate(wanted)
              for j, v in enumerate(sorted(found.get(i, ())))]  # fmt: skip
    return Sample(totals, tuple(ranked), bins)


def durations_of(rows: list[Any]) -> dict[str, Sample]:
    """Duration totals by label (from the runs grouped by buckets and label): the labels that
    ran longest, at most ``MAX_LABELS``."""
    by: dict[str, list[float]] = {}
    for r in rows:
        n = r[12]
        if n:
            t = by.setdefault(r[2], [0, 0.0, math.inf, -math.inf, 0.0])
            t[0] += n
            t[1] += r[13]
            t[2], t[3] = min(t[2], r[14]), max(t[3], r[15])
            t[4] += r[16]
    top = sorted(by.items(), key=lambda kv: (-kv[1][1], kv[0]))[:MAX_LABELS]
    return {label: Sample(Totals(label, int(t[0]), t[1], t[2], t[3], t[4])) for label, t in top}


def busy_of(runs: list[Any], islands: list[Any], window: Window) -> dict[str, tuple[StepSums, ...]]:
    """Busy cores, GPUs and nodes as step changes per bucket. ``runs``: sums per (start bucket,
    end bucket) of ``w``, ``w * (start - t0)`` and ``w * (end - t0)``: a change ``w`` at ``x``
    adds ``w * (bucket end - x)`` to its bucket's area. ``islands``: the edges of the stretches
    in which a node is busy (``islands_sql``)."""
    sums: dict[str, dict[int, list[float]]] = {"cores": {}, "gpus": {}, "nodes": {}}
    for r in runs:
        bs, be = int(r[0]), int(r[1])
        for i, what in enumerate(("cores", "gpus", "nodes")):
            w, ws, we = r[3 + 3 * i] or 0.0, r[4 + 3 * i] or 0.0, r[5 + 3 * i] or 0.0
            if w:
                for b, sign, wx in ((bs, 1.0, ws), (be, -1.0, we)):
                    a = sums[what].setdefault(b, [0.0, 0.0])
                    a[0] += sign * w
                    a[1] += sign * ((b + 1) * window.interval * w - wx)
    changes = []
    for s, e, prev, nxt in islands:
        if prev is None or s > prev:
            changes.append((s, 1.0))
        until = max(e if prev is None else prev, e)
        if nxt is None or nxt > until:
            changes.append((until, -1.0))
    out = {what: [StepSums(b, c, a) for b, (c, a) in sorted(v.items())] for what, v in sums.items()}
    out["nodes"] += steps(window, changes)
    return {k: tuple(v) for k, v in out.items()}


@contextmanager
def report_tx(engine: Engine, d: Dialect) -> Iterator[Connection]:
    """A read transaction for reports' statements. PostgreSQL: without JIT (compiling these plans
    takes longer than running them). SQLite: sorting in temporary files, not in memory (two
    connections sorting in memory at once each ran nearly twice as slow)."""
    with engine.connect() as conn:
        raw = None if d.pg else conn.connection.dbapi_connection
        if raw is not None:  # SQLite changes it only outside a transaction
            raw.execute("PRAGMA temp_store = FILE")
        try:
            with conn.begin():
                if d.pg:
                    conn.execute(text("SET LOCAL jit = off"))
                yield conn
        finally:
            if raw is not None:  # the connection goes back to its pool as the engine made it
                raw.execute("PRAGMA temp_store = MEMORY")


def _read(engine: Engine, d: Dialect, statement: tuple[str, dict[str, Any]], bounds: dict[str, float]) -> list[Any]:
    """The rows of one statement, in a transaction of its own."""
    with report_tx(engine, d) as conn:
        return list(conn.execute(text(statement[0]), {**statement[1], **bounds}))


def report_data(engine: Engine, query: ReportQuery, where: str = "") -> ReportData:
    """Everything a report needs, aggregated in the database: the tasks' span first (it gives
    the window), then on three connections at once the runs; the ends, then the tasks by state;
    the nodes' busy stretches, the allocations and the delays (each statement sees the store as
    it is when it starts)."""
    d = Dialect(engine.dialect.name)
    with report_tx(engine, d) as conn:
        sql, params = span_sql(query, d)
        first, last = conn.execute(text(sql), params).one()
    start = query.since if query.since is not None else first if first is not None else time.time()
    end = query.until if query.until is not None else last if last is not None else start
    window = window_for(start, max(end, start), query.interval)
    bounds = {"t0": window.start, "t1": window.end, "dt": window.interval}
    with ThreadPoolExecutor(2, thread_name_prefix="balsam-report") as pool:  # three connections at once
        runs = pool.submit(_read, engine, d, runs_sql(query, d), bounds)
        ended = pool.submit(_read, engine, d, ends_sql(query, d), bounds)
        tasks = pool.submit(_read, engine, d, tasks_sql(query, d), {})
        islands = _read(engine, d, islands_sql(query, d), bounds)
        with report_tx(engine, d) as conn:
            allocations = read_allocations(conn, window.start, window.end)
            delays = delays_of(conn, query, d, bounds)
        run_rows, ends_rows = runs.result(), ended.result()
        states, attempts = task_counts([(st, int(a), int(n), float(c), float(u)) for st, a, n, c, u in tasks.result()])
    ends = tuple(EndCount(int(r[3]), st, int(r[4 + i] or 0)) for r in ends_rows if r[0] == "end"
                 for i, st in enumerate(("FINISHED", "FAILED", "KILLED")))  # fmt: skip
    errors: dict[tuple[str, str | None], ErrorGroup] = {}
    for r in sorted((r for r in ends_rows if r[0] == "err"), key=lambda r: r[6]):
        key = (r[1], r[2])
        g = errors.get(key) or ErrorGroup(r[1], r[2], int(r[4]), int(r[5]), ())
        errors[key] = g._replace(examples=(*g.examples, int(r[3])))
    notes = []
    if allocations and any(a.cores_per_node is None for a in allocations):
        notes.append("some allocations did not record their cores per node: core utilization is unknown")
    if not allocations:
        notes.append("no allocation was recorded in this window: utilization is unknown")
    return ReportData(
        query=query, window=window, states=states, attempts=attempts, ends=ends,
        busy=busy_of(run_rows, islands, window), delays=delays, delay_edges=DELAY_EDGES,
        durations=durations_of(run_rows), errors=tuple(errors.values()),
        allocations=allocations, store=where, notes=tuple(notes),
    )  # fmt: skip


def task_counts(
    rows: list[tuple[str, int, int, float, float]],
) -> tuple[tuple[StateCount, ...], tuple[AttemptCount, ...]]:
    """Tasks by state, and by attempts made, from their counts by (state, attempts)."""
    by_state: dict[str, int] = {}
    by_attempt: dict[int, list[Any]] = {}
    finals = ("FINISHED", "FAILED", "KILLED")
    for st, att, n, created, updated in rows:
        by_state[st] = by_state.get(st, 0) + n
        a = by_attempt.setdefault(att, [0, 0, 0, 0, created, updated])
        a[0] += n
        if st in finals:
            a[1 + finals.index(st)] += n
        a[4], a[5] = min(a[4], created), max(a[5], updated)
    states = tuple(StateCount(st, n) for st, n in by_state.items())
    attempts = tuple(AttemptCount(att, *v) for att, v in sorted(by_attempt.items()))
    return states, attempts


class Reports:
    """Reports of what ran (a mixin of ``Store``)."""

    if TYPE_CHECKING:
        engine: Engine
        where: str

    def report_data(self, query: ReportQuery) -> ReportData:
        """The aggregates a report is computed from (see :func:`report_data`)."""
        return report_data(self.engine, query, self.where)

    def report(self, *, since: Any = None, until: Any = None, tags: Mapping[str, Any] | None = None,
               app: str | None = None, name: str | None = None, interval: Any = None) -> Report:  # fmt: skip
        """What ran: throughput, utilization, delays, durations, attempts, allocations, states
        and errors as DataFrames (see :class:`balsam_dask.reports.frames.Report`).

        ``since``/``until``: the window (epoch seconds, a datetime, an ISO time or an age such as
        ``"2h"``; default: the tasks' whole span); ``tags``, ``app``, ``name`` (a glob): which
        tasks; ``interval``: the timelines' step (seconds or ``"5m"``; default: from the span)."""
        from balsam_dask.reports.frames import build

        query = report_query(since=since, until=until, tags=tags, app=app, name=name, interval=interval)
        return build(self.report_data(query), ALL_STATES)
