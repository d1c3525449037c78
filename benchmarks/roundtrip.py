"""Round trip of one task on an idle cluster: bare Dask vs ours, and where the time goes.

    python benchmarks/roundtrip.py --rounds 200 --repeat 3

(a) bare ``distributed.LocalCluster(processes=True)``, ``--workers`` single-thread workers, and
(o) ours: ``LocalEnsembleCluster(nodes=--workers, cores_per_node=1)`` + ``balsam_dask.Client.submit``
(durable, the default). Each measurement runs in a fresh process (this script, ``--one``), the
two in rotating order, ``--repeat`` times. In each: a warm-up, then ``--rounds`` sequential round
trips (submit one no-op task, take its result), median and p90 in ms.

Then ``--samples`` more round trips, timestamped along the path, and the median of each stage
over them. The timestamps are the benchmark's own or Dask's logs, nothing printed by the product:
the client's submit and result (here), the scheduler's receipt of the update-graph and
task-finished messages and the client's of key-in-memory (stream handlers wrapped here), the
balsam plugin's update_graph hook (wrapped here), the scheduler's transitions
(``Scheduler.transition_log``), the worker's receipt of compute-task and its transitions
(``Worker.state.log``) and the task function's own start and end (it returns ``time.time()``).
All processes are on this host: one clock. Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any

from throughput import count

SYSTEMS = ("bare", "ours")


def stamp(x: int) -> tuple[float, float]:
    """The no-op task: its own start and end."""
    t = time.time()
    return t, time.time()


def wrap_scheduler(dask_scheduler: Any) -> None:
    """Timestamp the scheduler's receipt of update-graph and task-finished, and the balsam
    plugin's update_graph hook (benchmark instrumentation)."""
    marks: list[tuple[str, Any, float]] = []
    dask_scheduler._rt_marks = marks
    handlers = dask_scheduler.stream_handlers
    graph, finished = handlers["update-graph"], handlers["task-finished"]

    async def on_graph(**kw: Any) -> Any:  # Dask awaits its update-graph handler
        marks.append(("graph", tuple(kw.get("keys") or ()), time.time()))
        return await graph(**kw)

    def on_finished(**kw: Any) -> Any:
        marks.append(("finished", kw.get("key"), time.time()))
        return finished(**kw)

    handlers["update-graph"], handlers["task-finished"] = on_graph, on_finished
    plugin = dask_scheduler.plugins.get("balsam-dask")
    if plugin is not None:
        hook = plugin.update_graph

        def on_hook(*a: Any, **kw: Any) -> Any:
            marks.append(("hook", tuple(kw.get("keys") or ()), time.time()))
            return hook(*a, **kw)

        plugin.update_graph = on_hook


def scheduler_logs(dask_scheduler: Any) -> dict[str, Any]:
    marks = [(kind, list(k) if isinstance(k, tuple) else k, t) for kind, k, t in dask_scheduler._rt_marks]
    trans = [(t.key, t.start, t.finish, t.stimulus_id, t.timestamp) for t in dask_scheduler.transition_log]
    return {"marks": marks, "transitions": trans}


def worker_log(dask_worker: Any) -> list[Any]:
    out = []
    for e in dask_worker.state.log:
        if len(e) == 5 and e[1] == "compute-task":
            out.append((e[0], "compute-task", e[4]))
        elif len(e) == 7 and isinstance(e[1], str) and isinstance(e[2], str):
            out.append((e[0], f"{e[1]}>{e[3]}", e[6]))
    return out


def open_cluster(stack: ExitStack, system: str, workers: int, workdir: str) -> Any:
    import distributed

    if system == "ours":
        from balsam_dask import Client, LocalEnsembleCluster

        cl: Any = stack.enter_context(LocalEnsembleCluster(nodes=workers, cores_per_node=1, workdir=workdir))
        client: Any = stack.enter_context(Client(cl))
    else:
        cl = stack.enter_context(
            distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        )
        client = stack.enter_context(distributed.Client(cl))
    client.wait_for_workers(workers)
    return client


def one_trip(client: Any, i: int) -> tuple[float, float, float, Any, tuple[float, float]]:
    t0 = time.time()
    f = client.submit(stamp, i, pure=False)
    ts = time.time()
    body = f.result()
    t1 = time.time()
    return t0, ts, t1, f.key, body


def first(entries: list[tuple[str, float]], *names: str) -> float | None:
    """The time of the first entry named one of ``names``."""
    for name, t in entries:
        if name in names:
            return t
    return None


#: The stages of a round trip: (name, from event, to event); events are named below.
STAGES = [
    ("client submit call", "submit", "submitted"),
    ("submit returned -> scheduler update-graph", "submitted", "graph"),
    ("update-graph -> plugin hook", "graph", "hook"),
    ("hook (or update-graph) -> task waiting", "hook|graph", "waiting"),
    ("waiting -> no-worker (held)", "waiting", "no-worker"),
    ("-> processing (dispatch)", "no-worker|waiting", "processing"),
    ("processing -> worker compute-task", "processing", "compute-task"),
    ("compute-task -> executing", "compute-task", "executing"),
    ("executing -> function start", "executing", "body-start"),
    ("function body", "body-start", "body-end"),
    ("function end -> worker memory", "body-end", "w-memory"),
    ("worker memory -> scheduler task-finished", "w-memory", "finished"),
    ("task-finished -> scheduler memory", "finished", "memory"),
    ("scheduler memory -> client key-in-memory", "memory", "key-in-memory"),
    ("key-in-memory -> result (gather)", "key-in-memory", "result"),
    ("total", "submit", "result"),
]


def breakdown(trips: list[dict[str, Any]], sched: dict[str, Any], workers: dict[str, list[Any]]) -> dict[str, float]:
    """The median of each stage, in ms, over the sampled round trips."""
    events: dict[str, dict[str, float]] = {t["key"]: {} for t in trips}
    for t in trips:
        ev = events[t["key"]]
        ev.update(submit=t["t0"], submitted=t["ts"], result=t["t1"])
        ev["body-start"], ev["body-end"] = t["body"]
        ev["key-in-memory"] = t["kim"]
    for kind, keys, ts in sched["marks"]:
        for k in keys if isinstance(keys, list) else [keys]:
            if k in events:
                events[k].setdefault(kind, ts)
    for key, _start, finish, _stim, ts in sched["transitions"]:
        if key in events:
            name = "memory" if finish == "memory" else finish
            events[key].setdefault(name, ts)
    for log in workers.values():
        for key, what, ts in log:
            if key not in events:
                continue
            if what == "compute-task":
                events[key].setdefault("compute-task", ts)
            elif what.endswith(">executing"):
                events[key].setdefault("executing", ts)
            elif what.startswith("executing>") and what.endswith(">memory"):
                events[key].setdefault("w-memory", ts)
    out: dict[str, float] = {}
    for name, a, b in STAGES:
        vals = []
        for ev in events.values():
            start = next((ev[x] for x in a.split("|") if x in ev), None)
            if start is not None and b in ev:
                vals.append((ev[b] - start) * 1000)
        if vals:
            out[name] = round(statistics.median(vals), 3)
    return out


def run_one(system: str, rounds: int, samples: int, workers: int, warmup: int) -> dict[str, Any]:
    import dask

    dask.config.set({"distributed.admin.low-level-log-length": 100_000})
    workdir = tempfile.mkdtemp(prefix="bd-roundtrip-")
    os.chdir(workdir)
    with ExitStack() as stack:
        client = open_cluster(stack, system, workers, workdir)
        for i in range(warmup):
            one_trip(client, i)
        times = []
        for i in range(rounds):
            t0, _ts, t1, _key, _body = one_trip(client, i)
            times.append((t1 - t0) * 1000)
        client.run_on_scheduler(wrap_scheduler)
        kim: dict[Any, float] = {}
        handler = client._stream_handlers["key-in-memory"]

        def on_kim(key: Any = None, **kw: Any) -> Any:
            kim.setdefault(key, time.time())
            return handler(key=key, **kw)

        client._stream_handlers["key-in-memory"] = on_kim
        trips = []
        for i in range(samples):
            t0, ts, t1, key, body = one_trip(client, i)
            trips.append({"key": key, "t0": t0, "ts": ts, "t1": t1, "body": body})
        for t in trips:
            t["kim"] = kim.get(t["key"], float("nan"))
        sched = client.run_on_scheduler(scheduler_logs)
        wlogs = client.run(worker_log)
    times.sort()
    return {
        "system": system,
        "median_ms": round(statistics.median(times), 3),
        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 3),
        "breakdown": breakdown(trips, sched, wlogs),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=count(1), default=200, help="timed round trips per run")
    p.add_argument("--repeat", type=count(1), default=3, help="runs of each system, rotating order")
    p.add_argument("--samples", type=count(1), default=30, help="timestamped round trips per run (breakdown)")
    p.add_argument("--workers", type=count(1), default=2)
    p.add_argument("--warmup", type=count(0), default=30)
    p.add_argument("--one", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        res = run_one(args.one, args.rounds, args.samples, args.workers, args.warmup)
        print(json.dumps(res))
        return res
    load = os.getloadavg()[0]
    print(f"# {args.rounds} sequential round trips after {args.warmup} warm-up, {args.workers} workers,"
          f" {args.repeat} runs each; load average at start {load:.2f} on {os.cpu_count()} cores")  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    for rep in range(args.repeat):
        order = SYSTEMS[rep % 2 :] + SYSTEMS[: rep % 2]
        for system in order:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", system, "--rounds", str(args.rounds),
                   "--samples", str(args.samples), "--workers", str(args.workers),
                   "--warmup", str(args.warmup)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            results[system].append(res)
            print(f"run {rep + 1} {system}: median {res['median_ms']} ms, p90 {res['p90_ms']} ms", flush=True)
    figures: dict[str, Any] = {}
    for system, runs in results.items():
        figures[f"{system}_median_ms"] = round(statistics.median(r["median_ms"] for r in runs), 3)
        figures[f"{system}_p90_ms"] = round(statistics.median(r["p90_ms"] for r in runs), 3)
    figures["ours_over_bare"] = round(figures["ours_median_ms"] / figures["bare_median_ms"], 3)
    names = [s[0] for s in STAGES]
    print(f"# breakdown, ms (median over {args.samples} timestamped round trips, median over runs)")
    print(f"{'stage':45s} {'bare':>8s} {'ours':>8s}")
    for name in names:
        row = []
        for system in SYSTEMS:
            vals = [r["breakdown"][name] for r in results[system] if name in r["breakdown"]]
            row.append(round(statistics.median(vals), 3) if vals else None)
            if vals:
                figures[f"{system}: {name}"] = row[-1]
        shown = ["-" if v is None else f"{v:.3f}" for v in row]
        print(f"{name:45s} {shown[0]:>8s} {shown[1]:>8s}")
    for k in ("bare_median_ms", "bare_p90_ms", "ours_median_ms", "ours_p90_ms", "ours_over_bare"):
        print(f"{k:20s} {figures[k]}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
