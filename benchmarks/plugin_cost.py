"""What BalsamPlugin costs plain Dask work: collections, plain maps, scheduler start and close.

    python benchmarks/plugin_cost.py --repeat 5 --map-tasks 20000 --array-side 4000 --array-chunk 80

Plain ``distributed.Client`` on a ``distributed.LocalCluster(processes=True)`` with
``--workers`` single-thread workers, without ("bare") and with ``BalsamPlugin(store=<a new
SQLite file>)`` registered on its scheduler ("plugin"): plain Dask tasks that the plugin only
records. Each repetition runs one fresh cluster per system, each in a fresh Python process
(a bare run never imports balsam_dask, as a script without the plugin would not), in
rotating order (each repetition starts one system later). On it, after an untimed warm-up:

  (a) a dask.array computation: ``random((side, side), chunks=chunk).mean()`` (with the
      defaults 2,500 chunks, about 5,300 tasks);
  (b) ``client.map`` of ``--map-tasks`` tiny tasks, then ``client.gather``.

The store's writer lags the computation (it writes in batches, from a process of its own):
after each timed run the plugin's queue is flushed, untimed, so the next run starts level.
Also the CPU time all the processes of (a) and (b) spent (the run's own, its workers', the
store writer's until it has written the run), and the scheduler's process's alone (with the
client's, in the same process): on a shared host these vary less than wall times, and the
scheduler's event loop is what limits the rate of tiny tasks.

  (c) in this process, ``distributed.Scheduler(port=0, dashboard_address=None)`` without and
      with the plugin: the time of ``await scheduler`` (start) and of ``close()`` right after;
      and of ``close()`` after ``--close-tasks`` tasks ran on an in-process worker. The store
      exists (made once, untimed) as for every start but a store's first; "new store" starts
      on a new file each time (its schema made at start). ``--cold`` repetitions do the first
      start and close in a fresh Python process each (imports done, untimed), then time a
      second scheduler's close after tasks there (also for ``--baseline``).

``--instructions K`` counts, K times per system, the instructions the scheduler's process
(with the client) executes per task of a plain map: valgrind (cachegrind) runs it for two map
sizes (``--instructions-tasks``) and the difference is divided by the difference in tasks
(start-up cancels out). A count is unmoved by other processes on the host, unlike times
(run to run it still varies by a few per cent: the scheduler's periodic work follows the
clock, and under valgrind its process runs some forty times slower than its workers).

``--baseline PATH`` adds a system "baseline": the plugin of the balsam_dask checkout at PATH
(its processes run with ``PYTHONPATH=PATH``), to compare two versions in one interleaved run.

Reported: medians of each system's times, the medians of the paired ratios (each
repetition's plugin time over that repetition's bare time) for (a) and (b), and for (c) the
medians of the paired differences in milliseconds. Targets: (a), (b) <= 1.05x; (c) start +
close within 100 ms of bare. Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import distributed
from throughput import count

WORKS = ("array", "map")


def inc(x: int) -> int:
    return x + 1


def two_sizes(text: str) -> tuple[int, int]:
    """An argparse type: two task counts, the first smaller ("1000,3000")."""
    try:
        small, large = (int(x) for x in text.split(","))
    except ValueError:
        small = large = 0
    if not 0 < small < large:
        raise argparse.ArgumentTypeError(f"{text!r} is not two task counts, the first smaller (for example 1000,3000)")
    return small, large


def rotated(items: tuple[str, ...], rep: int) -> tuple[str, ...]:
    """``items`` in repetition ``rep``'s order: each repetition starts one later."""
    k = rep % len(items)
    return items[k:] + items[:k]


def flush_store(dask_scheduler: Any) -> None:
    plugin = dask_scheduler.plugins.get("balsam-dask")
    if plugin is not None:
        plugin.writer.flush()


def cpu_seconds() -> tuple[float, float]:
    """CPU time (user + system) so far of this process (the scheduler, its plugin's threads,
    the client) and of every process under it (workers, the store's writer)."""
    import psutil

    me = psutil.Process()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            children += sum(child.cpu_times()[:2])
        except psutil.Error:  # gone meanwhile
            pass
    return sum(me.cpu_times()[:2]), children


def array_run(side: int, chunk: int) -> float:
    """Seconds of one dask.array computation on the default (this cluster's) client."""
    import dask.array as da

    x = da.random.random((side, side), chunks=chunk)
    t0 = time.perf_counter()
    x.mean().compute()
    return time.perf_counter() - t0


def map_run(client: distributed.Client, n: int) -> float:
    """Seconds of a plain ``client.map`` of ``n`` tiny tasks and their gather."""
    t0 = time.perf_counter()
    futures = client.map(inc, range(n))
    client.gather(futures)
    dt = time.perf_counter() - t0
    del futures
    return dt


def cluster_runs(store: str | None, workers: int, side: int, chunk: int, tasks: int) -> dict[str, float]:
    """(a) and (b) on a fresh LocalCluster, with the plugin recording to ``store`` (None:
    bare): their seconds, and CPU seconds."""
    kw: dict[str, Any] = {}
    if store:
        from balsam_dask import BalsamPlugin

        kw["scheduler_kwargs"] = {"plugins": [BalsamPlugin(store)]}
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, **kw) as cluster:  # fmt: skip
        with distributed.Client(cluster) as client:
            client.wait_for_workers(workers)
            array_run(side // 4, chunk)  # warm-up: imports, first tasks
            map_run(client, 500)
            client.run_on_scheduler(flush_store)
            c0 = cpu_seconds()
            a = array_run(side, chunk)
            client.run_on_scheduler(flush_store)
            c1 = cpu_seconds()
            b = map_run(client, tasks)
            client.run_on_scheduler(flush_store)
            c2 = cpu_seconds()
    return {"array": a, "map": b, "array_cpu": sum(c1) - sum(c0), "map_cpu": sum(c2) - sum(c1),
            "array_sched_cpu": c1[0] - c0[0], "map_sched_cpu": c2[0] - c1[0]}  # fmt: skip


def map_only(store: str | None, workers: int, tasks: int) -> None:
    """(b) alone, untimed: what ``--instructions`` counts. The plugin's kill-request polling
    (once a second) is turned off: under valgrind a second is a few tasks."""
    kw: dict[str, Any] = {}
    if store:
        from balsam_dask import BalsamPlugin

        kw["scheduler_kwargs"] = {"plugins": [BalsamPlugin(store, poll_interval=3600)]}
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, **kw) as cluster:  # fmt: skip
        with distributed.Client(cluster) as client:
            client.wait_for_workers(workers)
            map_run(client, 200)
            map_run(client, tasks)
            client.run_on_scheduler(flush_store)


def instructions(pythonpath: str | None, store: str | None, workers: int, tasks: int) -> int:
    """Instructions the scheduler's process (with the client) executed for ``map_only``,
    counted by valgrind (its workers and the store's writer run untraced)."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, *[p for p in [env.get("PYTHONPATH")] if p]])
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import plugin_cost; "
            f"plugin_cost.map_only(sys.argv[2] or None, {workers}, {tasks})")  # fmt: skip
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           sys.executable, "-c", code, here, store or ""]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    refs = [line for line in proc.stderr.splitlines() if "I   refs:" in line or "I refs:" in line]
    if proc.returncode or not refs:
        raise RuntimeError(f"valgrind failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return int(refs[-1].rsplit(":", 1)[1].replace(",", ""))


def in_fresh_process(code: str, pythonpath: str | None, *argv: str) -> Any:
    """Run ``code`` (it prints one JSON line last) in a new Python process that imports this
    module; with ``pythonpath`` first on its path (another balsam_dask checkout)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, *[p for p in [env.get("PYTHONPATH")] if p]])
    here = os.path.dirname(os.path.abspath(__file__))
    prelude = "import asyncio, json, sys; sys.path.insert(0, sys.argv[1]); import plugin_cost; "
    proc = subprocess.run(
        [sys.executable, "-c", prelude + code, here, *argv],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )  # not a checkout's root: "-c" puts the cwd first on the path
    if proc.returncode:
        raise RuntimeError(f"a measurement failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def start_close(store: str | None, tasks: int) -> tuple[float, float]:
    """Seconds of an in-process scheduler's start, and of its close (after ``tasks`` tasks
    ran on an in-process worker); ``store`` None: bare Dask."""
    kw: dict[str, Any] = {}
    if store:
        from balsam_dask import BalsamPlugin

        kw["plugins"] = [BalsamPlugin(store)]
    t0 = time.perf_counter()
    s = distributed.Scheduler(port=0, dashboard_address=None, **kw)
    await s
    t1 = time.perf_counter()
    if tasks:
        async with distributed.Worker(s.address, nthreads=1, dashboard_address=None):
            async with distributed.Client(s.address, asynchronous=True) as c:
                await c.gather(c.map(inc, range(tasks)))
    t2 = time.perf_counter()
    await s.close()
    return t1 - t0, time.perf_counter() - t2


def first_start_close(store: str | None, tasks: int) -> tuple[float, float]:
    """The seconds of this process's first scheduler start + close, and of a second one's
    close after ``tasks`` tasks (a new store for each, if ``store`` names a new one)."""
    start, close = asyncio.run(start_close(store, 0))
    again = store.replace(".db", "-again.db") if store and "/new-" in store else store
    return start + close, asyncio.run(start_close(again, tasks))[1]


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def paired(values: dict[str, list[float]], name: str, over: str = "bare") -> float:
    """The median of each repetition's ``name`` over its ``over``."""
    return round(statistics.median(b / a for a, b in zip(values[over], values[name], strict=True)), 3)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=count(0), default=5, help="repetitions of (a) and (b); 0: none")
    p.add_argument("--workers", type=count(1), default=2)
    p.add_argument("--map-tasks", type=count(1), default=20_000)
    p.add_argument("--array-side", type=count(1), default=4000)
    p.add_argument("--array-chunk", type=count(1), default=80)
    p.add_argument("--start-repeat", type=count(0), default=15, help="repetitions of (c); 0: none")
    p.add_argument("--close-tasks", type=count(1), default=5)
    p.add_argument("--cold", type=count(0), default=5, help="fresh-process repetitions of (c); 0: none")
    p.add_argument("--baseline", help="a balsam_dask checkout whose plugin is measured too, as 'baseline'")
    p.add_argument("--instructions", type=count(0), default=0, help="repetitions of the valgrind count; 0: none")
    p.add_argument("--instructions-tasks", type=two_sizes, default=(1000, 3000), help="its two map sizes: 1000,3000")
    p.add_argument("--workdir", help="where the SQLite stores go (default: a new temporary directory)")
    args = p.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    tmp = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bd-plugin-cost-")
    os.makedirs(tmp, exist_ok=True)
    systems = ("bare", "plugin", "baseline") if args.baseline else ("bare", "plugin")
    path_of = {"baseline": os.path.abspath(args.baseline) if args.baseline else None}
    chunks = (args.array_side // args.array_chunk + (args.array_side % args.array_chunk > 0)) ** 2
    print(f"# (a) {args.array_side}^2 array in {chunks} chunks, (b) {args.map_tasks}-task map; {args.workers}"
          f" single-thread workers; {args.repeat} interleaved repetitions of {', '.join(systems)}")  # fmt: skip
    print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    runs: dict[str, dict[str, list[float]]] = {k: {s: [] for s in systems} for k in ("array", "map")}
    cpus: dict[str, dict[str, list[float]]] = {k: {s: [] for s in systems} for k in ("array", "map")}
    sched: dict[str, dict[str, list[float]]] = {k: {s: [] for s in systems} for k in ("array", "map")}
    for rep in range(args.repeat):
        for system in rotated(systems, rep):
            store = "" if system == "bare" else f"sqlite:///{tmp}/run-{rep}-{system}.db"
            sizes = (args.workers, args.array_side, args.array_chunk, args.map_tasks)
            code = "print(json.dumps(plugin_cost.cluster_runs(sys.argv[2] or None, *map(int, sys.argv[3:]))))"
            got = in_fresh_process(code, path_of.get(system), store, *map(str, sizes))
            for work in WORKS:
                runs[work][system].append(got[work])
                cpus[work][system].append(got[f"{work}_cpu"])
                sched[work][system].append(got[f"{work}_sched_cpu"])
        shown = [f"{w}_{s}={runs[w][s][-1]:.2f}s ({cpus[w][s][-1]:.1f} s CPU)" for w in WORKS for s in systems]
        print(f"rep {rep + 1}: " + ", ".join(shown), flush=True)
    figures: dict[str, float] = {}
    for work in WORKS if args.repeat else ():
        for system in systems:
            figures[f"{work}_{system}_s"] = round(statistics.median(runs[work][system]), 3)
            figures[f"{work}_{system}_cpu_s"] = round(statistics.median(cpus[work][system]), 3)
            figures[f"{work}_{system}_sched_cpu_s"] = round(statistics.median(sched[work][system]), 3)
        for system in systems[1:]:
            figures[f"ratio_{work}_{system}"] = round(figures[f"{work}_{system}_s"] / figures[f"{work}_bare_s"], 3)
            figures[f"paired_ratio_{work}_{system}"] = paired(runs[work], system)
            figures[f"paired_cpu_ratio_{work}_{system}"] = paired(cpus[work], system)
            figures[f"paired_sched_cpu_ratio_{work}_{system}"] = paired(sched[work], system)

    if args.instructions:
        small, large = args.instructions_tasks
        counts: dict[str, list[float]] = {s: [] for s in systems}
        for rep in range(args.instructions):
            for system in rotated(systems, rep):
                per_size = []
                for n in (small, large):
                    store = "" if system == "bare" else f"sqlite:///{tmp}/instr-{rep}-{system}-{n}.db"
                    per_size.append(instructions(path_of.get(system), store, args.workers, n))
                counts[system].append((per_size[1] - per_size[0]) / (large - small))
            print(f"instructions rep {rep + 1}: " + ", ".join(f"{k}={v[-1]:,.0f}/task" for k, v in counts.items()),
                  flush=True)  # fmt: skip
        for system in systems:
            figures[f"sched_instructions_per_task_{system}"] = round(statistics.median(counts[system]))
        for system in systems[1:]:
            figures[f"paired_instructions_ratio_{system}"] = paired(counts, system)

    existing = f"sqlite:///{tmp}/start.db"
    modes = ("bare", "plugin", "plugin_new_store")

    def store_of(mode: str, i: int) -> str | None:
        return None if mode == "bare" else existing if mode == "plugin" else f"sqlite:///{tmp}/new-{i}.db"

    if args.start_repeat or args.cold:
        from balsam_dask import Store

        Store(existing).close()
    if args.start_repeat:
        sc: dict[str, list[float]] = {f"{k}_{m}": [] for k in ("start", "close", "close_after_tasks") for m in modes}

        async def scheduler_runs() -> None:
            for mode in modes:  # warm-up: first-use imports, the store's schema
                await start_close(store_of(mode, -1), args.close_tasks)
            for i in range(args.start_repeat):
                for mode in rotated(modes, i):
                    start, close = await start_close(store_of(mode, 2 * i), 0)
                    sc[f"start_{mode}"].append(start)
                    sc[f"close_{mode}"].append(close)
                    _, close = await start_close(store_of(mode, 2 * i + 1), args.close_tasks)
                    sc[f"close_after_tasks_{mode}"].append(close)

        asyncio.run(scheduler_runs())
        for k, v in sc.items():
            figures[f"{k}_ms"] = median_ms(v)
        bare = [s + c for s, c in zip(sc["start_bare"], sc["close_bare"], strict=True)]
        for mode in modes[1:]:
            both = [s + c for s, c in zip(sc[f"start_{mode}"], sc[f"close_{mode}"], strict=True)]
            figures[f"extra_start_close_{mode}_ms"] = median_ms([x - y for x, y in zip(both, bare, strict=True)])
            extra = [x - y for x, y in zip(sc[f"close_after_tasks_{mode}"], sc["close_after_tasks_bare"], strict=True)]
            figures[f"extra_close_after_tasks_{mode}_ms"] = median_ms(extra)
    if args.cold:
        kinds = [*modes, *(("baseline", "baseline_new_store") if args.baseline else ())]
        cold: dict[str, list[float]] = {m: [] for m in kinds}
        after: dict[str, list[float]] = {m: [] for m in kinds}  # then close after tasks, in that process
        code = "print(json.dumps(plugin_cost.first_start_close(sys.argv[2] or None, int(sys.argv[3]))))"
        for i in range(args.cold):
            for kind in rotated(tuple(kinds), i):
                store = store_of(kind.replace("baseline", "plugin"), 1000 + 10 * i + kinds.index(kind))
                where = path_of.get(kind.split("_")[0])
                first, close = in_fresh_process(code, where, store or "", str(args.close_tasks))
                cold[kind].append(first)
                after[kind].append(close)
        for kind in kinds:
            figures[f"cold_start_close_{kind}_ms"] = median_ms(cold[kind])
            figures[f"cold_close_after_tasks_{kind}_ms"] = median_ms(after[kind])
        for kind in kinds[1:]:
            extra = [b - a for a, b in zip(cold["bare"], cold[kind], strict=True)]
            figures[f"extra_cold_start_close_{kind}_ms"] = median_ms(extra)
    print("# medians; paired_*: median of each repetition's ratio to bare; extra_*: median of paired differences")
    print("# targets: (a), (b) <= 1.05; start + close within 100 ms of bare")
    for k, v in figures.items():
        print(f"{k:44s} {v}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
