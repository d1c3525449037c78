"""Bulk task creation from the database side: ``Store.add_tasks`` against raw sqlite3.

Not collected by pytest. For example::

    .venv/bin/python benchmarks/taskdb_bench.py --rows 100000 --repeat 5

Each repetition makes a new SQLite store with one app (``./sim --n {n} --out out-{n}.h5``,
defaults cores=2, walltime=60) and adds ``--rows`` tasks, one parameter set each, with a tag
and a name (a sweep), in one ``add_tasks`` call: every row checked, then one transaction
(task rows born READY, their CREATED -> READY events, the shape counters). Every write
statement it hands the driver is captured (SQLAlchemy's ``before_cursor_execute``); the
baseline replays exactly those statements with exactly those rows through the raw ``sqlite3``
module into another new store of the same schema, in one ``BEGIN IMMEDIATE`` transaction,
with the store's pragmas (WAL, synchronous=NORMAL): the database's own share of the work.
Ours and raw alternate; the figures are medians and the median of the paired ratios. The row
check alone (``taskrows.check_rows``, pure) is timed too, and reading the same rows from task
files (CSV and JSON lines at ``--rows``, YAML at ``--yaml-rows``: PyYAML is slow) before
``add_tasks``. The last line printed is one JSON object of all figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from balsam_dask.store import Store
from balsam_dask.store.apps import app_defs
from balsam_dask.store.engine import read_tx
from balsam_dask.taskdb.files import load_task_file
from balsam_dask.taskdb.rows import check_rows

COMMAND = "./sim --n {n} --out out-{n}.h5"


def sweep(n: int) -> list[dict[str, Any]]:
    return [{"app": "sim", "params": {"n": i}, "name": f"sim-{i}", "tags": {"exp": "sweep"}} for i in range(n)]


def new_store(d: Path, name: str) -> Store:
    store = Store(f"sqlite:///{d}/{name}.db")
    store.add_app("sim", COMMAND, defaults={"cores": 2, "walltime": 60})
    return store


def ours(d: Path, i: int, rows: list[dict[str, Any]]) -> tuple[float, list[tuple[str, Any, bool]]]:
    """Seconds for add_tasks, and the write statements it made (statement, parameters, many)."""
    store = new_store(d, f"ours{i}")
    _ = store.session_id
    writes: list[tuple[str, Any, bool]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            writes.append((statement, parameters, executemany))

    event.listen(store.engine, "before_cursor_execute", capture)
    t0 = time.perf_counter()
    ids = store.add_tasks(rows)
    elapsed = time.perf_counter() - t0
    assert len(ids) == len(rows) and store.count(state="READY") == len(rows)
    store.close()
    return elapsed, writes


def raw(d: Path, i: int, writes: list[tuple[str, Any, bool]]) -> float:
    """Seconds for the raw driver to make the same writes in one transaction."""
    path = d / f"raw{i}.db"
    new_store(d, f"raw{i}").close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    for statement, parameters, many in writes:
        if many:
            conn.executemany(statement, parameters)
        else:
            conn.execute(statement, parameters)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def check_only(d: Path, rows: list[dict[str, Any]]) -> float:
    store = new_store(d, "check")
    with read_tx(store.engine) as conn:
        apps = app_defs(conn)
    store.close()
    t0 = time.perf_counter()
    check_rows(rows, apps)
    return time.perf_counter() - t0


def write_files(d: Path, rows: list[dict[str, Any]], yaml_rows: int) -> dict[str, Path]:
    files = {"csv": d / "tasks.csv", "jsonl": d / "tasks.jsonl", "yaml": d / "tasks.yaml"}
    with files["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["app", "param.n", "name", "tag.exp"])
        w.writerows([r["app"], r["params"]["n"], r["name"], "sweep"] for r in rows)
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    files["yaml"].write_text("".join(f"- {{app: sim, params: {{n: {r['params']['n']}}}, name: {r['name']}, "
                                     "tags: {exp: sweep}}\n" for r in rows[:yaml_rows]))  # fmt: skip
    return files


def from_file(d: Path, i: int, path: Path) -> tuple[float, float, int]:
    """Seconds to read the file, seconds for add_tasks, rows."""
    store = new_store(d, f"{path.suffix[1:]}{i}")
    _ = store.session_id
    t0 = time.perf_counter()
    loaded = load_task_file(path)
    t1 = time.perf_counter()
    store.add_tasks(loaded.rows, labels=loaded.labels)
    t2 = time.perf_counter()
    store.close()
    return t1 - t0, t2 - t1, len(loaded.rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--yaml-rows", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    rows = sweep(args.rows)
    ours_s: list[float] = []
    raw_s: list[float] = []
    check_s: list[float] = []
    files_s: dict[str, list[tuple[float, float, int]]] = {"csv": [], "jsonl": [], "yaml": []}
    with tempfile.TemporaryDirectory(prefix="taskdb-bench-") as tmp:
        d = Path(tmp)
        files = write_files(d, rows, args.yaml_rows)
        for i in range(args.repeat):
            o, writes = ours(d, i, rows)
            r = raw(d, i, writes)
            ours_s.append(o)
            raw_s.append(r)
            check_s.append(check_only(d, rows))
            for fmt, path in files.items():
                files_s[fmt].append(from_file(d, i, path))
            print(f"repeat {i}: add_tasks {args.rows / o:,.0f} rows/s, raw sqlite3 {args.rows / r:,.0f} rows/s "
                  f"(raw/ours {o / r:.2f}), check {args.rows / check_s[-1]:,.0f} rows/s; "
                  + ", ".join(f"{k} {v[-1][2] / (v[-1][0] + v[-1][1]):,.0f} rows/s" for k, v in files_s.items()),
                  flush=True)  # fmt: skip
    n = args.rows
    figures: dict[str, Any] = {
        "rows": n,
        "repeat": args.repeat,
        "add_tasks_rows_per_s": round(n / statistics.median(ours_s)),
        "raw_sqlite3_rows_per_s": round(n / statistics.median(raw_s)),
        "ours_over_raw_time": round(statistics.median(o / r for o, r in zip(ours_s, raw_s, strict=True)), 2),
        "check_rows_per_s": round(n / statistics.median(check_s)),
    }
    for fmt, runs in files_s.items():
        count = runs[0][2]
        figures[f"{fmt}_rows"] = count
        figures[f"{fmt}_read_rows_per_s"] = round(count / statistics.median(r[0] for r in runs))
        figures[f"{fmt}_end_to_end_rows_per_s"] = round(count / statistics.median(r[0] + r[1] for r in runs))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
