"""Nodes' busy stretches, kept as runs end: the ``node_busy`` table.

A node is busy from the start of a run on it until every run that began on it has ended. The
writer adds each run that ends (``since`` to ``ts`` of the event leaving RUNNING, on its
worker) to the stretch it overlaps or touches, or as a new one. Concurrent writers may leave
stretches that overlap each other; their union is always the union of the runs, so a report
merges them exactly when it reads them (``reportsql.islands_sql``), over thousands of rows
instead of a million runs. ``rebuild`` recomputes them from the events (the migration that
made the table, and ``balsam-dask rm``, which deletes runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, text

#: The worker of a run whose ending event does not name one: the event that started it.
START_WORKER = ("(SELECT MIN(x.worker) FROM events x WHERE x.task_id = {tid} AND x.to_state = 'RUNNING' "
                "AND x.ts = {at})")  # fmt: skip
_RUNS = (f"SELECT COALESCE(r.worker, {START_WORKER.format(tid='r.task_id', at='r.since')}, '') AS worker, "
         "r.since AS s, r.ts AS e FROM events r WHERE r.from_state = 'RUNNING' AND r.since IS NOT NULL")  # fmt: skip


def merged(runs: Iterable[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The union of ``(worker, start, end)`` intervals per worker, as disjoint stretches in
    (worker, start) order; intervals that touch are one stretch."""
    out: list[tuple[str, float, float]] = []
    for w, s, e in sorted(runs):
        if out and out[-1][0] == w and s <= out[-1][2]:
            if e > out[-1][2]:
                out[-1] = (w, out[-1][1], e)
        else:
            out.append((w, s, e))
    return out


def ended_runs(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, float, float]]:
    """The runs that events ``rows`` (``apply.EVENT_COLS`` order) end: (worker, start, end). A
    run whose ending event names no worker takes its starting event's (in ``rows`` or stored)."""
    runs, unnamed = [], []
    for r in rows:
        if r[3] == "RUNNING" and r[6] is not None:
            if r[7] is None:
                unnamed.append(r)
            else:
                runs.append((r[7], r[6], r[5]))
    if unnamed:
        started = {(r[1], r[5]): r[7] for r in rows if r[4] == "RUNNING"}
        for r in unnamed:
            w = started.get((r[1], r[6]))
            if w is None:
                q = START_WORKER.format(tid=":tid", at=":at")
                w = conn.execute(text(f"SELECT {q}"), {"tid": r[1], "at": r[6]}).scalar()
            runs.append((w or "", r[6], r[5]))
    return runs


#: One statement per batch: every merged stretch extends the stored ones it overlaps or touches
#: (the updated rows come back).
_EXTEND = {
    "postgresql": "UPDATE node_busy AS b SET started = LEAST(b.started, v.s), ended = GREATEST(b.ended, v.e) "
    "FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS v(w, s, e) "
    "WHERE b.worker = v.w AND b.ended >= v.s AND b.started <= v.e RETURNING worker, started, ended",
    "sqlite": "UPDATE node_busy AS b SET started = MIN(b.started, v.s), ended = MAX(b.ended, v.e) "
    "FROM (SELECT column1 AS w, column2 AS s, column3 AS e FROM (VALUES {values})) AS v "
    "WHERE b.worker = v.w AND b.ended >= v.s AND b.started <= v.e RETURNING worker, started, ended",
}
_INSERT = {
    "postgresql": "INSERT INTO node_busy (worker, started, ended) "
    "SELECT * FROM unnest(%s::text[], %s::float8[], %s::float8[])",
    "sqlite": "INSERT INTO node_busy (worker, started, ended) VALUES (?, ?, ?)",
}
_PART = 2000  # stretches per statement (SQLite binds at most 32,766 values)


def record(conn: Connection, runs: Iterable[tuple[str, float, float]]) -> None:
    """Add ended runs to their nodes' stretches, inside the caller's write transaction: a merged
    stretch extends every stored one it overlaps or touches, or goes in as a new one (if it
    bridges two, both grow and overlap: the union holds)."""
    stretches = merged(runs)
    pg = conn.dialect.name == "postgresql"
    dialect = "postgresql" if pg else "sqlite"
    for i in range(0, len(stretches), _PART):
        part = stretches[i : i + _PART]
        if pg:
            params: tuple[Any, ...] = tuple(list(col) for col in zip(*part, strict=True))
            sql = _EXTEND[dialect]
        else:
            params = tuple(v for row in part for v in row)
            sql = _EXTEND[dialect].format(values=", ".join(["(?, ?, ?)"] * len(part)))
        grown: dict[str, list[tuple[float, float]]] = {}
        for w, s, e in conn.exec_driver_sql(sql, params):
            grown.setdefault(w, []).append((s, e))
        new = [(w, s, e) for w, s, e in part if not any(a <= s and e <= b for a, b in grown.get(w, ()))]
        if new and pg:
            conn.exec_driver_sql(_INSERT[dialect], tuple(list(col) for col in zip(*new, strict=True)))
        elif new:
            conn.exec_driver_sql(_INSERT[dialect], new)


def stretches_sql(runs: str) -> str:
    """The busy stretches of ``runs`` (a query of ``worker``, ``s``, ``e``) as (worker,
    started, ended): a stretch starts where a run starts after every earlier end on its node."""
    prev = "MAX(e) OVER (PARTITION BY worker ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
    return f"""
SELECT worker, MIN(s) AS started, MAX(e) AS ended FROM (
  SELECT worker, s, e, SUM(brk) OVER (PARTITION BY worker ORDER BY s, e ROWS UNBOUNDED PRECEDING) AS g FROM (
    SELECT worker, s, e, CASE WHEN s > {prev} THEN 1 ELSE 0 END AS brk FROM ({runs}) r
  ) x
) y GROUP BY worker, g
"""


def workers_of(conn: Connection, task_ids: Sequence[int]) -> set[str]:
    """The workers the runs of these tasks ran on."""
    if not task_ids:
        return set()
    marks = ", ".join(f":t{i}" for i in range(len(task_ids)))
    sql = f"SELECT DISTINCT worker FROM ({_RUNS} AND r.task_id IN ({marks})) z"
    return {w for (w,) in conn.execute(text(sql), {f"t{i}": t for i, t in enumerate(task_ids)})}


def rebuild(conn: Connection, workers: Iterable[str] | None = None) -> None:
    """Recompute the stretches of ``workers`` (all if None) from the stored runs."""
    params: dict[str, Any] = {}
    where = ""
    if workers is not None:
        names = sorted(set(workers))
        if not names:
            return
        params = {f"w{i}": w for i, w in enumerate(names)}
        where = f" WHERE worker IN ({', '.join(f':w{i}' for i in range(len(names)))})"
    conn.execute(text(f"DELETE FROM node_busy{where}"), params)
    runs = f"SELECT * FROM ({_RUNS}) z{where}"
    conn.execute(text(f"INSERT INTO node_busy (worker, started, ended) {stretches_sql(runs)}"), params)
