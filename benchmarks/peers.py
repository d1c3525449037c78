"""Ours against its peers in one interleaved run: bare Dask, Parsl's HighThroughputExecutor and a process pool.

    python benchmarks/peers.py --py-tasks 5000 --sh-tasks 1000 --workers 2 --repeat 3 --rt-samples 50

Systems, each with ``--workers`` single-core workers, each run in a fresh process; in each
repetition the systems run one at a time in rotated order (each repetition starts one system later):

  dask   bare ``distributed.LocalCluster(n_workers, threads_per_worker=1, processes=True)``, ``client.map``
  ours   ``LocalEnsembleCluster(nodes=workers, cores_per_node=1)`` + ``balsam_dask.Client``: ``map`` and
         ``submit_app(["/bin/true"])`` (a fresh SQLite store per run)
  serve  ours, database tasks: ``balsam-dask submit --file`` then ``serve --local`` (serve_throughput.py's
         run_serve, one run per kind; its app is ``true``)
  parsl  Parsl ``HighThroughputExecutor`` (``max_workers_per_node=workers``, a LocalProvider block), a
         ``python_app`` and a ``bash_app`` running ``/bin/true``; skipped with a note without Parsl
         (``pip install .[peers]``)
  pool   ``concurrent.futures.ProcessPoolExecutor(workers)``: the floor without a scheduler; shell
         tasks are ``subprocess.run(["/bin/true"])`` in the pool
  bundled  ours with bundled dispatch: ``client.map(noop, ..., bundled=True)`` and
         ``submit_app(["/bin/true"], bundled=True)`` in a loop (work directory and output files, as ours)

Figures per system and kind (``py``: ``--py-tasks`` no-op Python tasks, benchmarks/serve_funcs.py's
``noop``; ``sh``: ``--sh-tasks`` runs of ``/bin/true``): tasks/s from the first submit to the last
result, after a warm-up of each kind (serve: the first RUNNING to the last FINISHED event in the
store, and ``*_wall_*``: the serve command's whole run, cluster start included); the idle round trip,
one task submitted and its result received, median of ``--rt-samples`` with 50 ms pauses, after
the timed runs (not for serve, whose tasks are polled from the store); the scheduler's CPU time per
task for dask and ours. The scheduler must be measured alone: LocalCluster and
LocalEnsembleCluster run the scheduler in the process that creates them, so each such run starts
the cluster in a host process of its own (``--child-host``) and measures from another process, a
client connected by address; ``client.run_on_scheduler(time.process_time)`` before and after each
timed map reads the host process's CPU time, which is the scheduler's (the cluster object in it is
idle; workers, nannies and our store writer are other processes, so the writer's CPU is not counted).

Ratios of the medians (``ratio_*``) and the median of each repetition's ratio (``paired_*``):
ours/parsl (py), serve/parsl (py, sh), ours/pool (py, sh), ours ``submit_app``/parsl ``bash_app`` (sh),
the round trip ours/dask, scheduler CPU per task ours/dask (py, sh). Function tasks are found through
PYTHONPATH = the repository root, given to every process. Ends with one JSON line of figures.
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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from serve_throughput import environ, run_serve
from throughput import count, rotated

SYSTEMS = ("dask", "ours", "bundled", "serve", "parsl", "pool")
KINDS = ("py", "sh")
SERVE_KIND = {"py": "function", "sh": "app"}
RT_PAUSE = 0.05


def have_parsl() -> bool:
    try:
        import parsl  # noqa: F401
    except ImportError:
        return False
    return True


def systems(text: str) -> list[str]:
    """An argparse type: a comma-separated list of systems."""
    names = [s for s in text.split(",") if s]
    bad = [s for s in names if s not in SYSTEMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of {', '.join(SYSTEMS)} (for example dask,ours)")
    return list(dict.fromkeys(names))


def timed(run: Callable[[], Any], n: int) -> float:
    """Tasks per second of ``run()``, which submits ``n`` tasks and waits for every result."""
    t0 = time.perf_counter()
    run()
    return n / (time.perf_counter() - t0)


def pool_map(pool: Any, fn: Callable[[int], int], n: int) -> None:
    """``fn`` over ``range(n)`` in ``pool``, every result received."""
    list(pool.map(fn, range(n)))


def round_trip_ms(one: Callable[[int], Any], samples: int) -> float:
    """Median milliseconds of ``one(i)``: submit one task and receive its result."""
    out = []
    for i in range(samples):
        t0 = time.perf_counter()
        one(i)
        out.append(time.perf_counter() - t0)
        time.sleep(RT_PAUSE)
    return statistics.median(out) * 1000


def host_child(system: str, workers: int, workdir: str) -> None:
    """Hold the cluster (and so its scheduler) in this process until stdin closes."""
    if system in ("ours", "bundled"):
        from balsam_dask import LocalEnsembleCluster

        cluster: Any = LocalEnsembleCluster(nodes=workers, cores_per_node=1, store=f"sqlite:///{workdir}.db",
                                            workdir=workdir)  # fmt: skip
    else:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster:
        print(f"ADDRESS {cluster.scheduler_address}", flush=True)
        sys.stdin.read()


def futures_child(system: str, args: argparse.Namespace) -> dict[str, float]:
    """Bare Dask or ours, measured by a client of a cluster held by a host process."""
    import distributed

    from balsam_dask import Client
    from benchmarks.serve_funcs import noop, run_true

    host = subprocess.Popen([sys.executable, __file__, "--child-host", system, "--workers", str(args.workers),
                             "--workdir", args.workdir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=environ())  # fmt: skip
    try:
        assert host.stdout is not None
        line = next((x for x in host.stdout if x.startswith("ADDRESS ")), "")
        if not line:
            raise RuntimeError(f"the {system} cluster's host did not start (exit code {host.wait()})")
        ours = system in ("ours", "bundled")
        bundled = {"bundled": True} if system == "bundled" else {}
        cls = Client if ours else distributed.Client
        with cls(line.split()[1]) as client:
            client.wait_for_workers(args.workers)

            def py(n: int) -> None:
                client.gather(client.map(noop, range(n), pure=False, **bundled))

            def sh(n: int) -> None:
                if ours:
                    client.gather([client.submit_app(["/bin/true"], **bundled) for _ in range(n)])
                else:
                    client.gather(client.map(run_true, range(n), pure=False))

            out: dict[str, float] = {}
            for kind, run, n in (("py", py, args.py_tasks), ("sh", sh, args.sh_tasks)):
                run(min(n, 100))  # warm up
                c0 = client.run_on_scheduler(time.process_time)
                out[f"{kind}_tasks_per_s"] = timed(partial(run, n), n)
                out[f"{kind}_sched_cpu_us_per_task"] = (client.run_on_scheduler(time.process_time) - c0) / n * 1e6
            if bundled:
                out["rt_ms"] = round_trip_ms(lambda i: client.map(noop, [i], bundled=True)[0].result(), args.rt_samples)
            else:
                out["rt_ms"] = round_trip_ms(lambda i: client.submit(noop, i, pure=False).result(), args.rt_samples)
    finally:
        if host.stdin is not None:
            host.stdin.close()
        try:
            host.wait(timeout=60)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait()
    return out


def parsl_child(args: argparse.Namespace) -> dict[str, float]:
    """Parsl's HighThroughputExecutor on one local block of ``workers`` workers."""
    import parsl
    from parsl.app.app import bash_app, python_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    from benchmarks.serve_funcs import noop, true_command

    # HTEX starts its interchange and worker pool as commands (interchange.py, process_worker_pool.py)
    # found on PATH: those of this interpreter's environment
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    htex = HighThroughputExecutor(label="htex", address="127.0.0.1", max_workers_per_node=args.workers,
                                  cores_per_worker=1, provider=LocalProvider(init_blocks=1, min_blocks=1,
                                                                             max_blocks=1))  # fmt: skip
    dfk = parsl.load(Config(executors=[htex], run_dir=str(Path(args.workdir) / "runinfo"), strategy="none"))
    try:
        py_app = python_app(noop, executors=["htex"])
        sh_app = bash_app(true_command, executors=["htex"])

        def py(n: int) -> None:
            for f in [py_app(i) for i in range(n)]:
                f.result()

        def sh(n: int) -> None:
            for f in [sh_app() for _ in range(n)]:
                f.result()

        out: dict[str, float] = {}
        for kind, run, n in (("py", py, args.py_tasks), ("sh", sh, args.sh_tasks)):
            run(min(n, 100))  # warm up: the worker pool connects
            out[f"{kind}_tasks_per_s"] = timed(partial(run, n), n)
        out["rt_ms"] = round_trip_ms(lambda i: py_app(i).result(), args.rt_samples)
    finally:
        dfk.cleanup()
    return out


def pool_child(args: argparse.Namespace) -> dict[str, float]:
    """``ProcessPoolExecutor(workers)``: no scheduler, the floor."""
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks.serve_funcs import noop, run_true

    out: dict[str, float] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for kind, fn, n in (("py", noop, args.py_tasks), ("sh", run_true, args.sh_tasks)):
            pool_map(pool, fn, min(n, 100))  # warm up: the pool's processes start
            out[f"{kind}_tasks_per_s"] = timed(partial(pool_map, pool, fn, n), n)
        out["rt_ms"] = round_trip_ms(lambda i: pool.submit(noop, i).result(), args.rt_samples)
    return out


def run_child(system: str, d: Path, name: str, args: argparse.Namespace) -> dict[str, float]:
    """One run of ``system`` in a fresh process; its figures."""
    work = d / name
    work.mkdir(parents=True, exist_ok=True)
    sizes = ["--py-tasks", str(args.py_tasks), "--sh-tasks", str(args.sh_tasks), "--workers", str(args.workers),
             "--rt-samples", str(args.rt_samples)]  # fmt: skip
    done = subprocess.run([sys.executable, __file__, "--child", system, *sizes, "--workdir", str(work)],
                          env=environ(), capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the {system} run exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run_system(system: str, d: Path, rep: int, args: argparse.Namespace) -> dict[str, float]:
    if system != "serve":
        return run_child(system, d, f"{system}_{rep}", args)
    out: dict[str, float] = {}
    for kind, n in (("py", args.py_tasks), ("sh", args.sh_tasks)):
        figures = run_serve(d, f"serve_{kind}_{rep}", SERVE_KIND[kind], n, args.workers)
        out[f"{kind}_tasks_per_s"] = figures["tasks_per_s"]
        out[f"{kind}_wall_tasks_per_s"] = figures["wall_tasks_per_s"]
    return out


# (name, numerator, denominator): figures as system_figure
RATIOS = [
    ("ours_over_parsl_py", "ours_py_tasks_per_s", "parsl_py_tasks_per_s"),
    ("serve_over_parsl_py", "serve_py_tasks_per_s", "parsl_py_tasks_per_s"),
    ("serve_over_parsl_sh", "serve_sh_tasks_per_s", "parsl_sh_tasks_per_s"),
    ("ours_over_pool_py", "ours_py_tasks_per_s", "pool_py_tasks_per_s"),
    ("ours_over_pool_sh", "ours_sh_tasks_per_s", "pool_sh_tasks_per_s"),
    ("ours_app_over_parsl_bash", "ours_sh_tasks_per_s", "parsl_sh_tasks_per_s"),
    ("rt_ours_over_dask", "ours_rt_ms", "dask_rt_ms"),
    ("sched_cpu_ours_over_dask_py", "ours_py_sched_cpu_us_per_task", "dask_py_sched_cpu_us_per_task"),
    ("sched_cpu_ours_over_dask_sh", "ours_sh_sched_cpu_us_per_task", "dask_sh_sched_cpu_us_per_task"),
    ("bundled_over_parsl_py", "bundled_py_tasks_per_s", "parsl_py_tasks_per_s"),
    ("bundled_over_parsl_sh", "bundled_sh_tasks_per_s", "parsl_sh_tasks_per_s"),
    ("bundled_over_pool_py", "bundled_py_tasks_per_s", "pool_py_tasks_per_s"),
    ("rt_bundled_over_dask", "bundled_rt_ms", "dask_rt_ms"),
    ("sched_cpu_bundled_over_ours_py", "bundled_py_sched_cpu_us_per_task", "ours_py_sched_cpu_us_per_task"),
    ("sched_cpu_bundled_over_ours_sh", "bundled_sh_sched_cpu_us_per_task", "ours_sh_sched_cpu_us_per_task"),
]


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Medians of every figure, then the ratios of the medians and the medians of paired ratios."""
    out: dict[str, float] = {}
    for system, values in runs.items():
        for figure in values[0]:
            out[f"{system}_{figure}"] = round(statistics.median(v[figure] for v in values), 2)
    for name, top, bottom in RATIOS:
        if top not in out or bottom not in out:
            continue
        out[f"ratio_{name}"] = round(out[top] / out[bottom], 3)
        (s1, f1), (s2, f2) = (key.split("_", 1) for key in (top, bottom))
        pairs = [a[f1] / b[f2] for a, b in zip(runs[s1], runs[s2], strict=True)]
        out[f"paired_{name}"] = round(statistics.median(pairs), 3)
    return out


def table(out: dict[str, float], chosen: list[str]) -> str:
    cols = [("py tasks/s", "py_tasks_per_s"), ("sh tasks/s", "sh_tasks_per_s"), ("round trip ms", "rt_ms"),
            ("sched CPU us/py", "py_sched_cpu_us_per_task"),
            ("sched CPU us/sh", "sh_sched_cpu_us_per_task")]  # fmt: skip
    lines = [f"{'system':14s}" + "".join(f"{c:>17s}" for c, _ in cols)]
    for system in chosen:
        cells = [f"{out[k]:>17.1f}" if (k := f"{system}_{f}") in out else f"{'-':>17s}" for _, f in cols]
        lines.append(f"{system:14s}" + "".join(cells))
        if system == "serve":
            walls = [f"{out[f'serve_{k}_wall_tasks_per_s']:>17.1f}" for k in KINDS]
            lines.append(f"{'  serve wall':14s}" + "".join(walls))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--py-tasks", type=count(1), default=5000, help="no-op Python tasks per run")
    p.add_argument("--sh-tasks", type=count(1), default=1000, help="/bin/true tasks per run")
    p.add_argument("--workers", type=count(1), default=2, help="single-core workers of every system")
    p.add_argument("--repeat", type=count(1), default=3)
    p.add_argument("--rt-samples", type=count(1), default=50, help="round trips per run (median)")
    p.add_argument("--systems", type=systems, default=list(SYSTEMS), help=f"which of {','.join(SYSTEMS)}")
    p.add_argument("--workdir", help="where stores and run directories go (default: a new temporary directory)")
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--child-host", choices=("dask", "ours", "bundled"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_host:
        host_child(args.child_host, args.workers, args.workdir)
        return {}
    if args.child:
        child = {"parsl": parsl_child, "pool": pool_child}.get(args.child)
        figures = child(args) if child else futures_child(args.child, args)
        print(json.dumps(figures))
        return figures
    chosen = list(args.systems)
    if "parsl" in chosen and not have_parsl():
        print("# Parsl is not installed (pip install .[peers]): its rows and ratios are skipped")
        chosen.remove("parsl")
    d = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bd-peers-"))
    d.mkdir(parents=True, exist_ok=True)
    print(f"# {args.py_tasks} Python and {args.sh_tasks} /bin/true tasks, {args.workers} single-core workers,"
          f" {args.repeat} rotated repetitions of {', '.join(chosen)}, in {d}")  # fmt: skip
    print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in chosen}
    for rep in range(args.repeat):
        for system in rotated(chosen, rep):
            runs[system].append(run_system(system, d, rep, args))
        shown = [f"{s} py={v[-1]['py_tasks_per_s']:.0f}/s sh={v[-1]['sh_tasks_per_s']:.0f}/s" for s, v in runs.items()]
        print(f"rep {rep + 1}: " + ", ".join(shown), flush=True)
    out = summarize(runs)
    print("# medians over repetitions; serve: first RUNNING to last FINISHED, serve wall: the command's whole run")
    print(table(out, chosen))
    print("# ratios of the medians (ratio_*) and medians of each repetition's ratio (paired_*)")
    for k, v in out.items():
        if k.startswith(("ratio_", "paired_")):
            print(f"{k:40s} {v}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
