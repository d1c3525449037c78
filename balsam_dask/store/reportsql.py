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

    # Pairing a RUNNING event ``r`` (attempt a) with the first event that left RUNNING in attempt a
    # (its end) and the last READY or RESTART_READY event of attempt a - 1 (when it became ready:
    # every event carries the attempts made so far). SQLite: lookups on the events' primary key
    # (a sort of every run costs more there); PostgreSQL: hash joins of grouped events (lookups
    # run one by one in the leader process, after the parallel scan).
    @property
    def pair_end(self) -> str:
        if self.pg:
            return "en.e0"
        return ("(SELECT MIN(x.ts) FROM events x WHERE x.task_id = r.task_id AND x.attempt = r.attempt "
                "AND x.from_state = 'RUNNING')")  # fmt: skip

    @property
    def pair_ready(self) -> str:
        if self.pg:
            return "rd.q0"
        return (f"(SELECT MAX(x.ts) FROM events x WHERE x.task_id = r.task_id AND x.attempt = r.attempt - 1 "
                f"AND x.to_state IN {READY_STATES})")  # fmt: skip

    @property
    def pair_joins(self) -> str:
        if not self.pg:
            return ""
        return (
            " LEFT JOIN (SELECT task_id, attempt, MIN(ts) AS e0 FROM events WHERE from_state = 'RUNNING' "
            "GROUP BY task_id, attempt) en ON en.task_id = r.task_id AND en.attempt = r.attempt"
            " LEFT JOIN (SELECT task_id, attempt + 1 AS attempt, MAX(ts) AS q0 FROM events WHERE to_state IN "
            f"{READY_STATES} GROUP BY task_id, attempt) rd ON rd.task_id = r.task_id AND rd.attempt = r.attempt"
        )

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


def states_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """Tasks by state (alive in the window: created by its end, changed since its start)."""
    where, params = _tasks_where(q, d)
    return f"SELECT t.state, COUNT(*) FROM tasks t WHERE 1 = 1{where} GROUP BY t.state", params


def attempts_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """Tasks by attempts made and final state, with the first creation and the last change."""
    where, params = _tasks_where(q, d)
    ended = ", ".join(f"SUM(CASE WHEN t.state = '{s}' THEN 1 ELSE 0 END)" for s in ("FINISHED", "FAILED", "KILLED"))
    sql = (f"SELECT t.attempt, COUNT(*), {ended}, MIN(t.created_at), MAX(t.updated_at) FROM tasks t "
           f"WHERE 1 = 1{where} GROUP BY t.attempt")  # fmt: skip
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


def runs_sql(q: ReportQuery, d: Dialect, edges: Sequence[float]) -> tuple[str, dict[str, Any]]:
    """Busy cores, GPUs and nodes per bucket (changes), run delays and durations by label.

    Parameters: ``t0``, ``t1`` (the window), ``dt`` (the interval). Sorts: one by bucket, one
    by worker and start (nodes: a node is busy from the start of a run until every run that
    began on it has ended: a stretch starts where a run starts after every earlier end, and ends
    at the running maximum of the ends where the next run starts after it), one by delay per
    quantile, one by label."""
    where, params = task_conditions(q, d, window=q.since is not None or q.until is not None)
    label = f'COALESCE(t.app, t."function", {d.name_stem("t.name")}, {d.key_prefix()}, t.key)'
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
    last = d.greatest("n - 1", "0")
    delays = " UNION ALL ".join(  # the two values around each quantile (n - 1) * p
        f"{_row('delay', 'NULL', str(i), 'n', 'v')} FROM (SELECT v FROM d ORDER BY v LIMIT 2 OFFSET "
        f"(SELECT {d.floor(f'{last} * {p!r}')} FROM dn)) z, dn"
        for i, p in enumerate(QUANTILES)
    )
    sql = f"""
WITH runs AS MATERIALIZED (
  SELECT s0, e0, q0, worker, c, g, n, label, {s} AS s, {e} AS e, CASE WHEN e0 IS NULL OR e0 >= :t0 THEN 1 END AS live
  FROM (
    SELECT r.ts AS s0, {d.pair_end} AS e0, {d.pair_ready} AS q0,
      COALESCE(r.worker, '') AS worker, t.cores * t.nodes AS c, t.gpus * t.nodes AS g, t.nodes AS n,
      {label} AS label
    FROM events r JOIN tasks t ON t.id = r.task_id{d.pair_joins}
    WHERE r.to_state = 'RUNNING' AND r.ts <= :t1{where} {d.fence}
  ) p
),
w AS NOT MATERIALIZED (SELECT worker, c, g, n, s, e FROM runs WHERE live = 1),
isl AS MATERIALIZED (
  SELECT s, e, MAX(e) OVER (o ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev, LEAD(s) OVER o AS next
  FROM w WINDOW o AS (PARTITION BY worker ORDER BY s, e)
),
nodes AS (
  SELECT s AS x, 1 AS k FROM isl WHERE prev IS NULL OR s > prev
  UNION ALL SELECT {d.greatest("COALESCE(prev, e)", "e")}, -1 FROM isl
  WHERE next IS NULL OR next > {d.greatest("COALESCE(prev, e)", "e")}
),
d AS NOT MATERIALIZED (SELECT s0 - q0 AS v FROM runs WHERE q0 IS NOT NULL AND s0 >= :t0),
dn AS MATERIALIZED (SELECT COUNT(*) AS n, SUM(v) AS tot, MIN(v) AS lo, MAX(v) AS hi FROM d),
ut AS (
  SELECT label, COUNT(*) AS n, SUM(e0 - s0) AS tot, MIN(e0 - s0) AS lo, MAX(e0 - s0) AS hi, SUM((e0 - s0) * c) AS cs
  FROM runs WHERE e0 IS NOT NULL AND e0 >= :t0 AND e0 <= :t1 GROUP BY label
)
{_row("busy", "NULL", "b", "NULL", "SUM(dc)", "SUM(ac)", "SUM(dg)", "SUM(ag)", "SUM(dn)", "SUM(an)")}
  FROM ({busy}) z GROUP BY b
UNION ALL {delays}
UNION ALL {_row("bin", "NULL", "bin", "COUNT(*)")} FROM (SELECT {bisect_case("v", edges)} AS bin FROM d) z GROUP BY bin
UNION ALL {_row("delays", "NULL", "n", "NULL", "tot", "lo", "hi")} FROM dn
UNION ALL {_row("durs", "label", "n", "NULL", "tot", "lo", "hi", "cs")}
  FROM (SELECT * FROM ut ORDER BY tot DESC, label LIMIT {MAX_LABELS}) z
"""
    return sql, params


def ends_sql(q: ReportQuery, d: Dialect) -> tuple[str, dict[str, Any]]:
    """Tasks ended per bucket (finished, failed, killed); errors by kind and message with up to
    3 example tasks. The events are read twice (cheaper than keeping the ends).

    Parameters: ``t0``, ``t1``, ``dt``."""
    where, params = task_conditions(q, d, window=False)
    join = " JOIN tasks t ON t.id = e.task_id" if q.filters_tasks else ""
    bucket = d.floor("(ts - :t0) / :dt")
    ended = ", ".join(f"CAST(SUM(CASE WHEN to_state = '{s}' THEN 1 ELSE 0 END) AS BIGINT)"
                      for s in ("FINISHED", "FAILED", "KILLED"))  # fmt: skip
    sql = f"""
WITH ends AS NOT MATERIALIZED (
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
