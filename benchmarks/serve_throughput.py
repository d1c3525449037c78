"""Database tasks run by ``balsam-dask serve`` against the same tasks as futures (``client.map``).

    python benchmarks/serve_throughput.py --tasks 1000 --repeat 3 --nodes 2

Two kinds of no-op task, ``--tasks`` of each: an app (``true``) and a Python function
(``benchmarks.serve_funcs:noop``). Every run is a fresh process with a fresh SQLite store, on
``--nodes`` emulated nodes of one core; in each repetition the runs go in rotated order (each
repetition starts one run later), one at a time:

  serve, once per kind: ``balsam-dask submit --file`` of a JSON-lines file (timed: rows/s,
  the command's whole run, interpreter start included), then ``balsam-dask serve --local``
  (timed from start to exit: cluster start and the idle TTL of 1 s included). Its tasks/s are
  N over the span from the first task's RUNNING event to the last task's FINISHED event in the
  store (``serve_*_tasks_per_s``) and N over the serve command's wall time (``*_wall_*``).
  futures: a script with ``LocalEnsembleCluster`` + ``balsam_dask.Client`` runs
  ``client.map(noop, range(N))`` and gathers, then N ``client.submit_app(["true"])`` and
  gathers: N over the time from the first submit to the last result (the cluster is up).

Also the median delay READY -> RUNNING per task, from the store's events: a serve task is
READY from its submit, so its delay includes the wait for serve and its cluster to start
(``*_delay_after_start_ms`` counts from serve's start instead); all include the queue.
Ratios serve/futures per kind, of the medians and the median of each repetition's ratio.
The function tasks' module is found through PYTHONPATH = the repository root, given to every
process. Ends with one JSON line of figures.
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
from pathlib import Path

from throughput import count, rotated

ROOT = Path(__file__).resolve().parents[1]
FUNCTION = "benchmarks.serve_funcs:noop"
KINDS = ("app", "function")


def environ() -> dict[str, str]:
    """This environment with the repository root first on PYTHONPATH (the no-op function's module)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def cli(url: str, *args: str, cwd: str | None = None) -> float:
    """Run ``balsam-dask --store url args...`` in a new process (in ``cwd``); seconds it took."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "balsam_dask.cli", "--store", url, *args], env=environ(),
                          capture_output=True, text=True, cwd=cwd)  # fmt: skip
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"balsam-dask {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def span_and_delays(url: str, kind: str, n: int, since: float | None = None) -> tuple[float, list[float]]:
    """From the store's events of the tasks of ``kind``: seconds from the first RUNNING to the
    last FINISHED, and each task's delay READY -> RUNNING (from ``since`` if later)."""
    from balsam_dask.store import Store

    with Store(url) as store:
        tasks = store.tasks(kind=kind, limit=None)
        states = {t.state for t in tasks}
        if len(tasks) != n or states != {"FINISHED"}:
            raise RuntimeError(f"{url}: {len(tasks)} {kind} tasks in states {sorted(states)}, expected {n} FINISHED")
        events = store.events(t.id for t in tasks)
    ready: dict[int, float] = {}
    running: dict[int, float] = {}
    finished: list[float] = []
    for e in events:
        if e.to_state == "READY":
            ready.setdefault(e.task_id, e.ts)
        elif e.to_state == "RUNNING":
            running.setdefault(e.task_id, e.ts)
        elif e.to_state == "FINISHED":
            finished.append(e.ts)
    delays = [running[i] - max(ready[i], since or 0.0) for i in running]
    return max(finished) - min(running.values()), delays


def task_rows(kind: str, n: int) -> str:
    if kind == "app":
        return '{"app": "noop"}\n' * n
    return "".join(json.dumps({"function": FUNCTION, "args": [i]}) + "\n" for i in range(n))


def run_serve(d: Path, name: str, kind: str, n: int, nodes: int) -> dict[str, float]:
    url = f"sqlite:///{d}/{name}.db"
    cli(url, "init")
    if kind == "app":
        cli(url, "app", "add", "noop", "--argv-json", '["true"]')
    tasks = d / f"{name}.jsonl"
    tasks.write_text(task_rows(kind, n))
    submit_s = cli(url, "submit", "--file", str(tasks))
    start = time.time()
    serve_s = cli(url, "serve", "--local", "--nodes", str(nodes), "--cores-per-node", "1", "--idle-ttl", "1",
                  "--progress", "none", "--workdir", str(d / name))  # fmt: skip
    span, delays = span_and_delays(url, "app" if kind == "app" else "python", n)
    _, after_start = span_and_delays(url, "app" if kind == "app" else "python", n, since=start)
    return {"rows_per_s": n / submit_s, "tasks_per_s": n / span, "wall_tasks_per_s": n / serve_s,
            "delay_ms": statistics.median(delays) * 1000,
            "delay_after_start_ms": statistics.median(after_start) * 1000}  # fmt: skip


def futures_child(url: str, n: int, nodes: int, workdir: str) -> None:
    """The futures run, in its own process: prints the seconds of each kind as one JSON line."""
    from balsam_dask import Client, LocalEnsembleCluster
    from benchmarks.serve_funcs import noop

    with LocalEnsembleCluster(nodes=nodes, cores_per_node=1, store=url, workdir=workdir) as cluster:
        with Client(cluster) as client:
            client.wait_for_workers(nodes)
            t0 = time.perf_counter()
            client.gather(client.map(noop, range(n)))
            t1 = time.perf_counter()
            client.gather([client.submit_app(["true"]) for _ in range(n)])
            t2 = time.perf_counter()
    print(json.dumps({"function": t1 - t0, "app": t2 - t1}))


def run_futures(d: Path, name: str, n: int, nodes: int) -> dict[str, dict[str, float]]:
    url = f"sqlite:///{d}/{name}.db"
    done = subprocess.run([sys.executable, __file__, "--child-futures", url, "--tasks", str(n), "--nodes", str(nodes),
                           "--workdir", str(d / name)], env=environ(), capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the futures run exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    seconds = json.loads(done.stdout.strip().splitlines()[-1])
    out = {}
    for kind in KINDS:
        _, delays = span_and_delays(url, "app" if kind == "app" else "python", n)
        out[kind] = {"tasks_per_s": n / seconds[kind], "delay_ms": statistics.median(delays) * 1000}
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=count(1), default=1000, help="tasks of each kind")
    p.add_argument("--repeat", type=count(1), default=3)
    p.add_argument("--nodes", type=count(1), default=2, help="emulated nodes of one core each")
    p.add_argument("--workdir", help="where stores and work directories go (default: a new temporary directory)")
    p.add_argument("--child-futures", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_futures:
        futures_child(args.child_futures, args.tasks, args.nodes, args.workdir)
        return {}
    d = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bd-serve-throughput-"))
    d.mkdir(parents=True, exist_ok=True)
    n = args.tasks
    print(f"# {n} no-op tasks of each kind (app `true`, function {FUNCTION}), {args.nodes} nodes of 1 core,"
          f" {args.repeat} rotated repetitions, in {d}")  # fmt: skip
    print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    runs: dict[str, list[dict[str, float]]] = {f"{c}_{k}": [] for c in ("serve", "futures") for k in KINDS}
    for rep in range(args.repeat):
        for unit in rotated(["serve_app", "serve_function", "futures"], rep):
            name = f"{unit}_{rep}"
            if unit == "futures":
                for kind, figures in run_futures(d, name, n, args.nodes).items():
                    runs[f"futures_{kind}"].append(figures)
            else:
                runs[unit].append(run_serve(d, name, unit.split("_")[1], n, args.nodes))
        walls = [f"{k}_wall={runs[k][-1]['wall_tasks_per_s']:.0f}/s" for k in ("serve_app", "serve_function")]
        rates = [f"{k}={v[-1]['tasks_per_s']:.0f}/s" for k, v in runs.items()]
        print(f"rep {rep + 1}: " + ", ".join(rates + walls), flush=True)
    out: dict[str, float] = {}
    for key, values in runs.items():
        for figure in values[0]:
            out[f"{key}_{figure}"] = round(statistics.median(v[figure] for v in values), 1)
    for kind in KINDS:
        serve, futures = runs[f"serve_{kind}"], runs[f"futures_{kind}"]
        for label, figure in (("serve", "tasks_per_s"), ("serve_wall", "wall_tasks_per_s")):
            out[f"ratio_{label}_over_futures_{kind}"] = round(
                out[f"serve_{kind}_{figure}"] / out[f"futures_{kind}_tasks_per_s"], 3
            )
            pairs = [s[figure] / f["tasks_per_s"] for s, f in zip(serve, futures, strict=True)]
            out[f"paired_{label}_over_futures_{kind}"] = round(statistics.median(pairs), 3)
    print("# medians over repetitions (paired_*: median of each repetition's ratio); serve_*_tasks_per_s: first"
          " RUNNING to last FINISHED, *_wall_*: the serve command's whole run")  # fmt: skip
    for k, v in out.items():
        print(f"{k:40s} {v}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
