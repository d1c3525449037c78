"""The SQL of reports (``store/reports.py`` runs it): aggregates over the events, never the
events themselves. One text per statement, for SQLite and PostgreSQL.

Runs (attempts) are paired in SQL: each RUNNING event with the event that left RUNNING in the
same attempt, and the last READY or RESTART_READY event before it (correlated lookups on the
events' primary key, clustered by task). Each statement reads the events once (a materialized
CTE) and returns its aggregates as rows of one shape, tagged by ``kind``. Nothing is grouped by
a value of unbounded cardinality but buckets, labels, workers and messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from balsam_dask.reports.records import QUANTILES, ReportQuery
from balsam_dask.store.queries import like_pattern

READY_STATES = "('READY', 'RESTART_READY')"
END_STATES = "('FINISHED', 'FAILED', 'KILLED')"
ATTEMPT_ERRORS = "('RUN_ERROR', 'RUN_TIMEOUT')"
FLOAT = "DOUBLE PRECISION"


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

    def tag(self, i: int) -> str:
        """A tag's value as text (the key bound as ``tag_k<i>``)."""
        return f"(t.tags ->> :tag_k{i})" if self.pg else f"json_extract(t.tags, :tag_k{i})"

    def tag_key(self, key: str) -> str:
        return key if self.pg else '$."' + key.replace('"', '""') + '"'

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


def tasks_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """Tasks by state and attempts, with the first creation and the last change."""
    where, params = task_conditions(q, d, window=False)
    if q.since is not None:
        where += " AND t.updated_at >= :since"
        params["since"] = q.since
    if q.until is not None:
        where += " AND t.created_at <= :until"
        params["until"] = q.until
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


def _near_quantiles(rank: str, n: str) -> str:
    """Ranks (1-based, of ``n``) whose values a quantile interpolates between."""
    return " OR ".join(f"ABS(({rank} - 1) - ({n} - 1) * {p!r}) < 1" for p in QUANTILES)


def _row(kind: str, label: str = "NULL", i1: str = "NULL", i2: str = "NULL", *floats: str) -> str:
    """One output row: kind, label, two integers and six floats."""
    fs = [*floats, *["NULL"] * (6 - len(floats))]
    cols = [f"CAST('{kind}' AS TEXT)", f"CAST({label} AS TEXT)", f"CAST({i1} AS BIGINT)", f"CAST({i2} AS BIGINT)",
            *(f"CAST({f} AS {FLOAT})" for f in fs)]  # fmt: skip
    return "SELECT " + ", ".join(cols)


def runs_sql(q: ReportQuery, d: Dialect, edges: Sequence[float]) -> tuple[str, dict[str, Any]]:
    """Busy cores, GPUs and nodes per bucket (changes), run delays and durations by label.

    Parameters: ``t0``, ``t1`` (the window), ``dt`` (the interval)."""
    where, params = task_conditions(q, d, window=q.since is not None or q.until is not None)
    label = f'COALESCE(t.app, t."function", t.name, {d.key_prefix()}, t.key)'
    s = d.greatest("s0", ":t0")
    e = d.least("COALESCE(e0, :t1)", ":t1")

    def bucket(x: str) -> str:
        return d.floor(f"(({x}) - :t0) / :dt")

    def to_end(x: str) -> str:  # from x to the end of its bucket
        return f"(:t0 + ({bucket(x)} + 1) * :dt - ({x}))"

    busy = " UNION ALL ".join([
        f"SELECT {bucket('s')} AS b, c AS dc, c * {to_end('s')} AS ac, g AS dg, g * {to_end('s')} AS ag, "
        f"n - 1 AS dn, (n - 1) * {to_end('s')} AS an FROM w",
        f"SELECT {bucket('e')}, -c, -c * {to_end('e')}, -g, -g * {to_end('e')}, 1 - n, (1 - n) * {to_end('e')} FROM w",
        f"SELECT {bucket('x')}, 0, 0, 0, 0, k, k * {to_end('x')} FROM nodes",
    ])  # fmt: skip
    full = "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING"
    sql = f"""
WITH runs AS MATERIALIZED (
  SELECT r.ts AS s0,
    (SELECT MIN(x.ts) FROM events x WHERE x.task_id = r.task_id AND x.attempt = r.attempt
       AND x.from_state = 'RUNNING') AS e0,
    (SELECT MAX(x.ts) FROM events x WHERE x.task_id = r.task_id AND x.to_state IN {READY_STATES}
       AND x.ts <= r.ts) AS q0,
    COALESCE(r.worker, '') AS worker, t.cores * t.nodes AS c, t.gpus * t.nodes AS g, t.nodes AS n, {label} AS label
  FROM events r JOIN tasks t ON t.id = r.task_id
  WHERE r.to_state = 'RUNNING' AND r.ts <= :t1{where}
),
w AS (SELECT worker, c, g, n, {s} AS s, {e} AS e FROM runs WHERE e0 IS NULL OR e0 >= :t0),
isl AS (
  SELECT s, e, MAX(e) OVER (o ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev,
    MAX(e) OVER (o {full}) AS last, ROW_NUMBER() OVER o AS rn
  FROM w WINDOW o AS (PARTITION BY worker ORDER BY s, e)
),
nodes AS (
  SELECT s AS x, 1 AS k FROM isl WHERE prev IS NULL OR s > prev
  UNION ALL SELECT prev, -1 FROM isl WHERE s > prev
  UNION ALL SELECT last, -1 FROM isl WHERE rn = 1
),
d AS (SELECT s0 - q0 AS v FROM runs WHERE q0 IS NOT NULL AND s0 >= :t0),
dr AS (
  SELECT v, {bisect_case("v", edges)} AS bin FROM d
),
ds AS (
  SELECT v, bin, ROW_NUMBER() OVER o AS rn, COUNT(*) OVER (o {full}) AS n, LEAD(bin) OVER o AS nb
  FROM dr WINDOW o AS (ORDER BY v)
),
u AS (SELECT label, e0 - s0 AS v, c FROM runs WHERE e0 IS NOT NULL AND e0 >= :t0 AND e0 <= :t1),
us AS (
  SELECT label, v, ROW_NUMBER() OVER o AS rn, COUNT(*) OVER (o {full}) AS n, SUM(v) OVER (o {full}) AS tot,
    SUM(v * c) OVER (o {full}) AS cs, MIN(v) OVER (o {full}) AS lo, MAX(v) OVER (o {full}) AS hi
  FROM u WINDOW o AS (PARTITION BY label ORDER BY v)
)
{_row("busy", "NULL", "b", "NULL", "SUM(dc)", "SUM(ac)", "SUM(dg)", "SUM(ag)", "SUM(dn)", "SUM(an)")}
  FROM ({busy}) z GROUP BY b
UNION ALL {_row("delay", "NULL", "rn", "n", "v")} FROM ds WHERE {_near_quantiles("rn", "n")}
UNION ALL {_row("bin", "NULL", "bin", "rn")} FROM ds WHERE nb IS NULL OR nb <> bin
UNION ALL {_row("delays", "NULL", "COUNT(*)", "NULL", "SUM(v)", "MIN(v)", "MAX(v)")} FROM d
UNION ALL {_row("dur", "label", "rn", "n", "v")} FROM us WHERE {_near_quantiles("rn", "n")}
UNION ALL {_row("durs", "label", "n", "NULL", "tot", "lo", "hi", "cs")} FROM us WHERE rn = 1
"""
    return sql, params


def ends_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """Tasks ended per bucket and state; errors by kind and message with up to 3 example tasks.

    Parameters: ``t0``, ``t1``, ``dt``."""
    where, params = task_conditions(q, d, window=False)
    join = " JOIN tasks t ON t.id = e.task_id" if q.filters_tasks else ""
    bucket = d.floor("(ts - :t0) / :dt")
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
SELECT CAST('end' AS TEXT), CAST(to_state AS TEXT), CAST(NULL AS TEXT), CAST({bucket} AS BIGINT),
  CAST(COUNT(*) AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT)
FROM ends WHERE to_state IN {END_STATES} AND (from_state IS NULL OR from_state <> to_state)
GROUP BY to_state, {bucket}
UNION ALL
SELECT CAST('err' AS TEXT), CAST(st AS TEXT), CAST(message AS TEXT), CAST(task_id AS BIGINT), CAST(events AS BIGINT),
  CAST(tasks AS BIGINT), CAST(rn AS BIGINT)
FROM ranked WHERE rn <= 3
"""
    return sql, params
