"""Reports of what ran: ``Store.report`` (``balsam_dask.report`` opens a store and calls it).

Three statements aggregate in SQL (``store/reportsql.py``): tasks by state and attempts (which
also gives the run's span), the runs (busy resources per interval, delays, durations), and the
ends and errors; the allocations are read as they are (a run has few). The pure computations
of ``balsam_dask.reports`` turn the rows into DataFrames.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
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
)
from balsam_dask.reports.window import window_for
from balsam_dask.spec import parse_duration, validate_tags
from balsam_dask.store import queries as Q
from balsam_dask.store.engine import read_tx
from balsam_dask.store.models import allocations_t
from balsam_dask.store.reportsql import Dialect, attempts_sql, ends_sql, runs_sql, states_sql
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


def delays_of(rows: list[Any]) -> Sample:
    """The delays' sample: the two values around each quantile (``k = floor((n - 1) * p)``: at
    ranks k + 1 and k + 2), their totals and histogram."""
    totals = next((Totals("", int(r[2]), r[4] or 0.0, r[5] or 0.0, r[6] or 0.0, 0.0) for r in rows if r[0] == "delays"),
                  None)  # fmt: skip
    ranked = []
    for i, p in enumerate(QUANTILES):
        values = sorted(float(r[4]) for r in rows if r[0] == "delay" and r[2] == i)
        if values:
            n = int(next(r[3] for r in rows if r[0] == "delay" and r[2] == i))
            k = math.floor(max(n - 1, 0) * p)
            ranked += [Ranked("", k + 1 + j, n, v) for j, v in enumerate(values)]
    bins = tuple(BinCount("", int(r[2]), int(r[3])) for r in rows if r[0] == "bin")
    return Sample(totals if totals and totals.n else None, tuple(ranked), bins)


def durations_of(rows: list[Any]) -> dict[str, Sample]:
    """Duration totals by label."""
    return {r[1]: Sample(Totals(r[1], int(r[2]), r[4] or 0.0, r[5] or 0.0, r[6] or 0.0, r[7] or 0.0))
            for r in rows if r[0] == "durs"}  # fmt: skip


def report_data(engine: Engine, query: ReportQuery, where: str = "") -> ReportData:
    """Everything a report needs, aggregated in the database."""
    d = Dialect(engine.dialect.name)
    with read_tx(engine) as conn:
        if d.pg:  # compiling these plans (LLVM) takes longer than running them
            conn.execute(text("SET LOCAL jit = off"))
        sql, params = states_sql(query, d)
        states = tuple(StateCount(st, int(n)) for st, n in conn.execute(text(sql), params))
        sql, params = attempts_sql(query, d)
        attempts = tuple(
            AttemptCount(int(a), int(n), int(f), int(x), int(k), float(c), float(u))
            for a, n, f, x, k, c, u in conn.execute(text(sql), params)
        )
        now = time.time()
        start = query.since if query.since is not None else min((a.first_created for a in attempts), default=now)
        end = query.until if query.until is not None else max((a.last_updated for a in attempts), default=start)
        window = window_for(start, max(end, start), query.interval)
        bounds = {"t0": window.start, "t1": window.end, "dt": window.interval}
        sql, params = runs_sql(query, d, DELAY_EDGES)
        rows = list(conn.execute(text(sql), {**params, **bounds}))
        sql, params = ends_sql(query, d)
        ends_rows = list(conn.execute(text(sql), {**params, **bounds}))
        allocations = read_allocations(conn, window.start, window.end)
    busy: dict[str, list[StepSums]] = {"cores": [], "gpus": [], "nodes": []}
    for r in rows:
        if r[0] == "busy":
            for i, what in enumerate(("cores", "gpus", "nodes")):
                busy[what].append(StepSums(int(r[2]), r[4 + 2 * i] or 0.0, r[5 + 2 * i] or 0.0))
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
        busy={k: tuple(v) for k, v in busy.items()}, delays=delays_of(rows), delay_edges=DELAY_EDGES,
        durations=durations_of(rows), errors=tuple(errors.values()), allocations=allocations, store=where,
        notes=tuple(notes),
    )  # fmt: skip


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
