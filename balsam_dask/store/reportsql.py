"""The SQL of reports (``store/reports.py`` runs it): aggregates over the events, never the
events themselves. One text per statement, for SQLite and PostgreSQL.

No events are paired: the event that ends a run carries its start (``since``, schema 0005) and
its worker, the event that starts one the time its task became ready (its ``since``), and a task
running now its start (``state_at``). Each statement returns its aggregates as rows of one
shape, tagged by ``kind``. Nothing is grouped by a value of unbounded cardinality but buckets,
labels, workers and messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from balsam_dask.reports.records import ReportQuery
from balsam_dask.store.busy import START_WORKER
from balsam_dask.store.queries import like_pattern

READY_STATES = "('READY', 'RESTART_READY')"
END_STATES = "('FINISHED', 'FAILED', 'KILLED')"
ATTEMPT_ERRORS = "('RUN_ERROR', 'RUN_TIMEOUT')"
FLOAT = "DOUBLE PRECISION"
#: Durations are reported for the names that ran longest, at most this many.
MAX_LABELS = 1000


@dataclass(frozen=True)
class Dialect:
    """The few spellings that differ between SQLite and PostgreSQL."""

    name: str

    @property
    def pg(self) -> bool:
        return self.name == "postgresql"

    def floor(self, x: str) -> str:
        """The integer part of a non-negative ``x`` (CAST rounds on PostgreSQL, truncates on SQLite)."""
        return f"CAST(FLOOR({x}) AS BIGINT)" if self.pg else f"CAST({x} AS INTEGER)"

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})" if self.pg else f"MAX({a}, {b})"

    def least(self, a: str, b: str) -> str:
        return f"LEAST({a}, {b})" if self.pg else f"MIN({a}, {b})"

    @property
    def fence(self) -> str:
        """Keeps a subquery from being merged into its query (which would evaluate its correlated
        subqueries once per use of their value)."""
        return "OFFSET 0" if self.pg else "LIMIT -1 OFFSET 0"

    def tag(self, i: int) -> str:
        """A tag's value as text (the key bound as ``tag_k<i>``)."""
        return f"(t.tags ->> :tag_k{i})" if self.pg else f"json_extract(t.tags, :tag_k{i})"

    def tag_key(self, key: str) -> str:
        return key if self.pg else '$."' + key.replace('"', '""') + '"'

    def name_stem(self, x: str) -> str:
        """A task name without a trailing number after ``-``, ``_`` or ``.`` (``sim-0017``: ``sim``)."""
        bare = f"rtrim({x}, '0123456789')"
        last = f"right({bare}, 1)" if self.pg else f"substr({bare}, -1)"
        stem = f"substr({bare}, 1, length({bare}) - 1)"
        cut = f"length({bare}) > 1 AND length({bare}) < length({x})"
        return f"CASE WHEN {last} IN ('-', '_', '.') AND {cut} THEN {stem} ELSE {x} END"

    def key_prefix(self) -> str:
        """A task key up to its first ``-`` (Dask keys are ``<function>-<token>``)."""
        if self.pg:
            return "NULLIF(split_part(t.key, '-', 1), '')"
        return "CASE WHEN instr(t.key, '-') > 1 THEN substr(t.key, 1, instr(t.key, '-') - 1) END"


def task_conditions(q: ReportQuery, d: Dialect, window: bool) -> tuple[str, dict[str, Any]]:
    """``AND ...`` selecting the query's tasks (alias ``t``), and its parameters; with ``window``,
    only tasks alive in it (created by its end, changed since its start)."""
    conds: list[str] = []
    params: dict[str, Any] = {}
    for i, (k, v) in enumerate(q.tags):
        conds.append(f"{d.tag(i)} = :tag_v{i}")
        params[f"tag_k{i}"], params[f"tag_v{i}"] = d.tag_key(k), v
    if q.app is not None:
        conds.append("t.app = :app")
        params["app"] = q.app
    if q.name is not None:
        pattern = like_pattern(q.name)
        conds.append("t.name LIKE :name ESCAPE '\\'" if pattern is not None else "t.name = :name")
        params["name"] = pattern if pattern is not None else q.name
    if window:
        conds.append("t.created_at <= :t1 AND t.updated_at >= :t0")
    return "".join(f" AND {c}" for c in conds), params


def _tasks_where(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    where, params = task_conditions(q, d, window=False)
    if q.since is not None:
        where += " AND t.updated_at >= :since"
        params["since"] = q.since
    if q.until is not None:
        where += " AND t.created_at <= :until"
        params["until"] = q.until
    return where, params


def span_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """The first creation and the last change of the tasks alive in the window (created by its
    end, changed since its start): the run's span."""
    where, params = _tasks_where(q, d)
    return f"SELECT MIN(t.created_at), MAX(t.updated_at) FROM tasks t WHERE 1 = 1{where}", params


def tasks_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """Tasks by state and attempts made (alive in the window: created by its end, changed since
    its start), with the first creation and the last change."""
    where, params = _tasks_where(q, d)
    sql = (f"SELECT t.state, t.attempt, COUNT(*), MIN(t.created_at), MAX(t.updated_at) FROM tasks t "
           f"WHERE 1 = 1{where} GROUP BY t.state, t.attempt")  # fmt: skip
    return sql, params


def bisect_case(x: str, edges: Sequence[float], lo: int = 0, hi: int | None = None) -> str:
    """SQL for how many of the sorted ``edges`` are <= ``x`` (a binary search of nested CASEs)."""
    hi = len(edges) if hi is None else hi
    if lo >= hi:
        return str(lo)
    mid = (lo + hi) // 2
    below, above = bisect_case(x, edges, lo, mid), bisect_case(x, edges, mid + 1, hi)
    return f"CASE WHEN {x} < {edges[mid]!r} THEN {below} ELSE {above} END"


def _row(kind: str, label: str = "NULL", i1: str = "NULL", i2: str = "NULL", *floats: str) -> str:
    """One output row: kind, label, two integers and six floats."""
    fs = [*floats, *["NULL"] * (6 - len(floats))]
    cols = [f"CAST('{kind}' AS TEXT)", f"CAST({label} AS TEXT)", f"CAST({i1} AS BIGINT)", f"CAST({i2} AS BIGINT)",
            *(f"CAST({f} AS {FLOAT})" for f in fs)]  # fmt: skip
    return "SELECT " + ", ".join(cols)


def _runs(q: ReportQuery, d: Dialect, ended: str, running: str) -> tuple[str, dict[str, Any]]:
    """The runs that overlap the window (parameters ``t0``, ``t1``) as rows of ``ended``
    (columns over ``r``, the event that ended the run, and ``t``, its task) and ``running``
    (over ``t``, a task running now). ``s`` and ``e`` stand for the run's start and end, cut
    to the window; ``v`` for its duration (NULL unless it ended in the window)."""
    where, params = task_conditions(q, d, window=q.since is not None or q.until is not None)
    ended = (ended.replace("{s}", d.greatest("r.since", ":t0")).replace("{e}", d.least("r.ts", ":t1"))
             .replace("{v}", "CASE WHEN r.ts <= :t1 THEN r.ts - r.since END"))  # fmt: skip
    running = running.replace("{s}", d.greatest("t.state_at", ":t0")).replace("{e}", ":t1").replace("{v}", "NULL")
    join = " JOIN tasks t ON t.id = r.task_id" if "t." in ended or where else ""
    sql = (f"SELECT {ended} FROM events r{join} "
           f"WHERE r.from_state = 'RUNNING' AND r.since <= :t1 AND r.ts >= :t0{where} "
           f"UNION ALL SELECT {running} FROM tasks t "
           f"WHERE t.state = 'RUNNING' AND t.state_at <= :t1{where}")  # fmt: skip
    return sql, params


def runs_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """The runs grouped by the buckets of their start and end and by label: for busy cores,
    GPUs and nodes beyond a run's first (``w``: cores, GPUs, nodes - 1) the sums of ``w``,
    ``w * (start - t0)`` and ``w * (end - t0)``; for durations their count, sum, least,
    greatest and core-seconds. Parameters: ``t0``, ``t1``, ``dt``."""
    label = f'COALESCE(t.app, t."function", {d.name_stem("t.name")}, {d.key_prefix()}, t.key)'
    cols = "{s} AS s, {e} AS e, {v} AS v, t.cores * t.nodes AS c, t.gpus * t.nodes AS g, t.nodes - 1 AS k"
    runs, params = _runs(q, d, f"{cols}, {label} AS label", f"{cols}, NULL")
    sums = ", ".join(f"SUM({w}), SUM({w} * (s - :t0)), SUM({w} * (e - :t0))" for w in ("c", "g", "k"))
    sql = f"""
SELECT bs, be, label, {sums}, COUNT(v), SUM(v), MIN(v), MAX(v), SUM(v * c)
FROM (SELECT {d.floor("(s - :t0) / :dt")} AS bs, {d.floor("(e - :t0) / :dt")} AS be, label, s, e, v, c, g, k
      FROM ({runs}) r {d.fence}) z
GROUP BY bs, be, label
"""
    return sql, params


def islands_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """The runs at the edges of the stretches in which a node is busy (from the start of a run
    until every run that began on it has ended): each with its start and end, the running
    maximum of the ends before it and the next start on its node (a stretch starts where a run
    starts after every earlier end, and ends at the running maximum of the ends where the next
    run starts after it). Every task's runs are read as the stretches the writer kept
    (``store/busy.py``), cut to the window, with the runs going on now; some tasks' as their
    runs. Parameters: ``t0``, ``t1``."""
    running = START_WORKER.format(tid="t.id", at="t.state_at")
    if q.filters_tasks:  # an event that ended a run before schema 0005 may not name the worker: its start does
        ended = START_WORKER.format(tid="r.task_id", at="r.since")
        runs, params = _runs(q, d, f"COALESCE(r.worker, {ended}, '') AS worker, {{s}} AS s, {{e}} AS e",
                             f"COALESCE({running}, ''), {{s}}, {{e}}")  # fmt: skip
    else:
        params = {}
        runs = (f"SELECT worker, {d.greatest('started', ':t0')} AS s, {d.least('ended', ':t1')} AS e "
                f"FROM node_busy WHERE started <= :t1 AND ended >= :t0 "
                f"UNION ALL SELECT COALESCE({running}, ''), {d.greatest('t.state_at', ':t0')}, :t1 FROM tasks t "
                f"WHERE t.state = 'RUNNING' AND t.state_at <= :t1")  # fmt: skip
    until = d.greatest("COALESCE(prev, e)", "e")
    sql = f"""
SELECT s, e, prev, next FROM (
  SELECT s, e, MAX(e) OVER (o ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev, LEAD(s) OVER o AS next
  FROM ({runs}) r WINDOW o AS (PARTITION BY worker ORDER BY s, e)
) z WHERE prev IS NULL OR s > prev OR next IS NULL OR next > {until}
"""
    return sql, params


def delays_sql(q: ReportQuery, d: Dialect, edges: Sequence[float]) -> tuple[str, dict[str, Any]]:
    """Run delays (from ready to running, of the runs that started in the window): their count,
    sum, least and greatest, and how many fall in each histogram bin of ``edges``. Parameters:
    ``t0``, ``t1``."""
    sql, params = _delays(q, d)
    sql = f"""
WITH d AS MATERIALIZED ({sql})
{_row("delays", "NULL", "COUNT(*)", "NULL", "SUM(v)", "MIN(v)", "MAX(v)")} FROM d
UNION ALL {_row("bin", "NULL", "bin", "COUNT(*)")} FROM (SELECT {bisect_case("v", edges)} AS bin FROM d) z GROUP BY bin
"""
    return sql, params


def delay_ranks_sql(q: ReportQuery, d: Dialect, n: int) -> tuple[str, dict[str, Any]]:
    """For each of ``n`` quantiles ``i``, the two delays at ranks ``k_i + 1`` and ``k_i + 2``
    among those in ``[lo_i, hi_i)`` (parameters with ``t0``, ``t1``): the values around the
    quantile, found in the histogram bins that hold its ranks, so only those are sorted."""
    sql, params = _delays(q, d)
    inside = [f"(v >= :lo{i} AND v < :hi{i})" for i in range(n)]
    picks = " UNION ALL ".join(
        f"SELECT {i} AS i, v FROM (SELECT v FROM d WHERE {c} ORDER BY v LIMIT 2 OFFSET :k{i}) z{i}"
        for i, c in enumerate(inside)
    )
    return f"WITH d AS MATERIALIZED (SELECT v FROM ({sql}) x WHERE {' OR '.join(inside)}) {picks}", params


def _delays(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    where, params = task_conditions(q, d, window=False)
    join = " JOIN tasks t ON t.id = r.task_id" if q.filters_tasks else ""
    sql = (f"SELECT r.ts - r.since AS v FROM events r{join} WHERE r.to_state = 'RUNNING' AND r.since IS NOT NULL "
           f"AND r.ts >= :t0 AND r.ts <= :t1{where}")  # fmt: skip
    return sql, params


def ends_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """Tasks ended per bucket (finished, failed, killed); errors by kind and message with up to
    3 example tasks.

    Parameters: ``t0``, ``t1``, ``dt``."""
    where, params = task_conditions(q, d, window=False)
    join = " JOIN tasks t ON t.id = e.task_id" if q.filters_tasks else ""
    bucket = d.floor("(ts - :t0) / :dt")
    ended = ", ".join(f"CAST(SUM(CASE WHEN to_state = '{s}' THEN 1 ELSE 0 END) AS BIGINT)"
                      for s in ("FINISHED", "FAILED", "KILLED"))  # fmt: skip
    sql = f"""
WITH ends AS MATERIALIZED (
  SELECT e.task_id, e.from_state, e.to_state, e.ts, e.message FROM events e{join}
  WHERE (e.to_state IN {END_STATES} OR e.to_state IN {ATTEMPT_ERRORS}
         OR (e.to_state = 'RESTART_READY' AND e.from_state = 'RUNNING'))
    AND e.ts >= :t0 AND e.ts <= :t1{where}
),
errs AS (
  SELECT CASE WHEN to_state = 'RESTART_READY' THEN 'LOST' ELSE to_state END AS st, message, task_id, COUNT(*) AS k
  FROM ends
  WHERE to_state IN {ATTEMPT_ERRORS} OR to_state = 'RESTART_READY'
    OR (to_state = 'FAILED' AND (from_state IS NULL OR from_state NOT IN {ATTEMPT_ERRORS}))
  GROUP BY 1, 2, 3
),
ranked AS (
  SELECT st, message, task_id, SUM(k) OVER (g ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS events,
    COUNT(*) OVER (g ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS tasks, ROW_NUMBER() OVER g AS rn
  FROM errs WINDOW g AS (PARTITION BY st, message ORDER BY task_id)
)
SELECT CAST('end' AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST({bucket} AS BIGINT), {ended}
FROM ends WHERE to_state IN {END_STATES} AND (from_state IS NULL OR from_state <> to_state)
GROUP BY {bucket}
UNION ALL
SELECT CAST('err' AS TEXT), CAST(st AS TEXT), CAST(message AS TEXT), CAST(task_id AS BIGINT), CAST(events AS BIGINT),
  CAST(tasks AS BIGINT), CAST(rn AS BIGINT)
FROM ranked WHERE rn <= 3
"""
    return sql, params
