"""The report (``balsam_dask.report``: aggregation in SQL) against loading every event with the
raw driver and computing the same figures in pandas.

Not collected by pytest. Sizes come from the command line, for example::

    .venv/bin/python benchmarks/report_bench.py --tasks 1000000 --repeat 3 --backends sqlite,postgresql

For each backend a store of ``--tasks`` finished tasks (``report_workload.py``: ~4 events each,
5% retried, 4 allocations) is written with the raw driver, then ``--repeat`` rounds alternate:

- ours: ``Store.report_data`` (statements that aggregate in the database) and the
  DataFrames built from it (``reports.frames.build``), on a store opened read-only;
- baseline: every task and event read with the raw driver (sqlite3, psycopg) into pandas,
  runs paired, buckets, islands, delays, durations and errors computed there, and the same
  DataFrames built from the result.

Both must give the same report (checked every round). Medians are printed, the ratio
baseline/ours, and last one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report_baseline
import report_workload
from throughput import count, drop_schema, pg_schema_url

from balsam_dask.reports.frames import Report, build
from balsam_dask.store import busy
from balsam_dask.store.api import Store
from balsam_dask.store.engine import write_tx
from balsam_dask.store.reports import report_query
from balsam_dask.store.states import ALL_STATES


def build_store(url: str, backend: str, n: int) -> tuple[float, float]:
    """Write the workload of ``n`` tasks into a new store at ``url``, then the nodes' busy
    stretches that the store's writer keeps as runs end (here computed from the runs, as the
    migration that made the table does): seconds each took."""
    tasks, events, allocs = report_workload.generate(n)
    Store(url).close()  # the schema
    t = time.perf_counter()
    if backend == "sqlite":
        report_workload.write_sqlite(url.removeprefix("sqlite:///"), tasks, events, allocs)
    else:
        report_workload.write_postgres(report_baseline.pg_conninfo(url), tasks, events, allocs)
    written = time.perf_counter() - t
    with Store(url) as store, write_tx(store.engine) as conn:
        t = time.perf_counter()
        busy.rebuild(conn)
        return written, time.perf_counter() - t


def built(backend: str, seconds: tuple[float, float]) -> None:
    print(f"{backend}: store written in {seconds[0]:.1f} s, busy stretches in {seconds[1]:.1f} s", flush=True)


def ours(url: str) -> Report:
    with Store(url, read_only=True) as s:
        return build(s.report_data(report_query()), ALL_STATES)


def same(a: Report, b: Report) -> list[str]:
    """The figures on which two reports differ (relative 1e-6)."""
    bad = []
    for k, v in a.summary.items():
        w = b.summary[k]
        if isinstance(v, float) and isinstance(w, float):
            if not (abs(v - w) <= 1e-6 * max(1.0, abs(v)) or (v != v and w != w)):
                bad.append(f"summary {k}: {v} != {w}")
        elif isinstance(v, dict):
            bad += [f"summary {k}.{x}: {y} != {w[x]}" for x, y in v.items()
                    if not (abs(y - w[x]) <= 1e-6 * max(1.0, abs(y)) or (y != y and w[x] != w[x]))]  # fmt: skip
        elif v != w and k != "store":
            bad.append(f"summary {k}: {v} != {w}")
    for name, df in a.tables().items():
        other = b.tables()[name]
        try:
            import pandas.testing as pdt

            pdt.assert_frame_equal(df, other, check_dtype=False, rtol=1e-6, check_index_type=False)
        except AssertionError as e:
            bad.append(f"{name}: {str(e).splitlines()[0]}")
    return bad


def timed(fn: Any, *args: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result)."""
    gc.collect()
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - w, time.process_time() - c, out


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=count(1), default=1_000_000)
    p.add_argument("--repeat", type=count(1), default=3)
    p.add_argument("--backends", default="sqlite")
    p.add_argument("--workdir", help="where the SQLite store goes (default: a new temporary directory)")
    p.add_argument("--reuse", action="store_true", help="reuse the SQLite store of this size in --workdir if there")
    p.add_argument(
        "--pg-url", default=os.environ.get("BALSAM_DASK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in ("sqlite", "postgresql"):
            p.error(f"--backends {args.backends!r}: {b!r} is not sqlite or postgresql, e.g. --backends sqlite")
    tmp = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bd-report-")
    os.makedirs(tmp, exist_ok=True)
    print(f"# {args.tasks} tasks, {args.repeat} alternating rounds; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores")  # fmt: skip
    figures: dict[str, float] = {"tasks": args.tasks}
    for backend in backends:
        schema = None
        if backend == "sqlite":
            path = f"{tmp}/report-{args.tasks}.db"
            url = f"sqlite:///{path}"
            if not (args.reuse and os.path.exists(path)):
                for suffix in ("", "-wal", "-shm", ".key"):
                    if os.path.exists(path + suffix):
                        os.remove(path + suffix)
                built(backend, build_store(url, backend, args.tasks))
        else:
            url, schema = pg_schema_url(args.pg_url)
            built(backend, build_store(url, backend, args.tasks))
        try:
            walls: dict[str, list[float]] = {"ours": [], "baseline": []}
            cpus: dict[str, list[float]] = {"ours": [], "baseline": []}
            for rep in range(args.repeat):
                got: dict[str, Report] = {}
                order = ["ours", "baseline"] if rep % 2 == 0 else ["baseline", "ours"]
                for name in order:
                    fn = ours if name == "ours" else report_baseline.report
                    wall, cpu, got[name] = timed(fn, url)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
                differ = same(got["ours"], got["baseline"])
                if differ:
                    raise SystemExit(f"{backend}: the reports differ: " + "; ".join(differ[:5]))
                o, b = walls["ours"][-1], walls["baseline"][-1]
                print(f"{backend} round {rep + 1}: ours {o:.2f} s ({cpus['ours'][-1]:.2f} s CPU here), "
                      f"baseline {b:.2f} s ({cpus['baseline'][-1]:.2f} s CPU)", flush=True)  # fmt: skip
        finally:
            if schema is not None:
                drop_schema(args.pg_url, schema)
        o, b = statistics.median(walls["ours"]), statistics.median(walls["baseline"])
        figures[f"{backend}_ours_s"] = round(o, 3)
        figures[f"{backend}_baseline_s"] = round(b, 3)
        figures[f"{backend}_ours_client_cpu_s"] = round(statistics.median(cpus["ours"]), 3)
        figures[f"{backend}_baseline_client_cpu_s"] = round(statistics.median(cpus["baseline"]), 3)
        figures[f"{backend}_ratio_baseline_over_ours"] = round(b / o, 2)
        print(f"{backend}: median ours {o:.2f} s, baseline {b:.2f} s: {b / o:.1f}x", flush=True)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
