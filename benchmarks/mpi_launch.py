"""MPI launch overhead and gang placement rate.

    python benchmarks/mpi_launch.py --tasks 200 --repeat 3 --nodes 1024 --gangs 20000

1. ``--tasks`` two-rank ``/bin/true`` tasks through ``client.submit_mpi`` on a
   LocalEnsembleCluster of one 2-core node (so they run one after another, like a loop),
   versus the very same ``mpiexec`` command called directly in a loop, and versus bare
   Dask: the same command run by ``subprocess.run`` as plain ``client.submit`` tasks on a
   ``distributed.LocalCluster`` of one worker with one thread (no store, no placement),
   in interleaved repetitions of one run. Reports the totals, our per-task overhead and
   the ratios ours / bare mpiexec (target: <= 1.2), bare Dask / bare mpiexec (what Dask
   alone costs on this machine) and ours / bare Dask.
2. Gang placement rate of the placement core (the Placer the scheduler plugin runs) with
   ``--nodes`` small emulated nodes (1 core each) in allocations of 64, and a backlog of
   gangs of 2-16 nodes: placements per second over a run where gangs finish and new ones
   are placed (target >= 100 placements/s).

Ends with one JSON line of figures (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time


def _run(command: list[str], workdir: str) -> int:
    out = subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out.returncode


def bare_loop(command: list[str], n: int, workdir: str) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        _run(command, workdir)
    return time.perf_counter() - t0


def bare_dask(client, command: list[str], n: int, workdir: str) -> float:  # type: ignore[no-untyped-def]
    from distributed import wait

    t0 = time.perf_counter()
    futures = [client.submit(_run, command, workdir, pure=False) for _ in range(n)]
    wait(futures)
    dt = time.perf_counter() - t0
    assert client.gather(futures) == [0] * n
    return dt


def ours(client, n: int) -> float:  # type: ignore[no-untyped-def]
    from distributed import wait

    t0 = time.perf_counter()
    futures = [client.submit_mpi(["true"], ranks_per_node=2, durable=False) for _ in range(n)]
    wait(futures)
    dt = time.perf_counter() - t0
    for f in futures:
        f.result()
    return dt


def gang_rate(nodes: int, gangs: int, seed: int) -> float:
    from balsam_dask.packing.placer import NodeInfo, Placer
    from balsam_dask.spec import Resources

    rng = random.Random(seed)
    placer = Placer()
    for i in range(nodes):
        placer.add_node(NodeInfo(f"n{i}", f"alloc{i // 64}", cores=1))
    for g in range(gangs):
        placer.submit(g, Resources(nodes=rng.choice([2, 4, 8, 16]), ranks_per_node=1), priority=0)
    placed = 0
    running: list[int] = []
    now = time.time()
    t0 = time.perf_counter()
    while placed < gangs:
        got = placer.schedule(now)
        placed += len(got)
        running += [a.task_id for a in got]  # type: ignore[misc]
        if not got and not running:
            break
        rng.shuffle(running)
        for tid in running[: max(1, len(running) // 2)]:  # half the running gangs finish
            placer.finished(tid)
        running = running[max(1, len(running) // 2) :]
    return placed / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--nodes", type=int, default=1024)
    p.add_argument("--gangs", type=int, default=20000)
    args = p.parse_args(argv)
    from distributed import Client as DaskClient
    from distributed import LocalCluster

    from balsam_dask import Client, LocalEnsembleCluster

    tmp = tempfile.mkdtemp(prefix="bd-mpi-")
    os.chdir(tmp)
    print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    bare_t: list[float] = []
    ours_t: list[float] = []
    dask_t: list[float] = []
    with (
        LocalEnsembleCluster(nodes=1, cores_per_node=2, workdir=tmp) as cluster,
        Client(cluster) as client,
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as plain,
        DaskClient(plain) as dask_client,
    ):
        warm = client.submit_mpi(["true"], ranks_per_node=2).result()
        command = list(warm.command)  # exactly what balsam_dask runs: the same mpiexec, flags and hosts
        print("# command:", " ".join(command))
        bare_loop(command, 5, tmp)
        bare_dask(dask_client, command, 5, tmp)
        for rep in range(args.repeat):
            bare_t.append(bare_loop(command, args.tasks, tmp))
            dask_t.append(bare_dask(dask_client, command, args.tasks, tmp))
            ours_t.append(ours(client, args.tasks))
            print(f"rep {rep + 1}: bare {bare_t[-1]:.2f}s, bare Dask {dask_t[-1]:.2f}s, "
                  f"submit_mpi {ours_t[-1]:.2f}s", flush=True)  # fmt: skip
    rates = [gang_rate(args.nodes, args.gangs, seed) for seed in range(args.repeat)]
    b, o, d = statistics.median(bare_t), statistics.median(ours_t), statistics.median(dask_t)
    figures = {
        "bare_mpiexec_total_s": round(b, 3),
        "bare_dask_total_s": round(d, 3),
        "submit_mpi_total_s": round(o, 3),
        "per_task_overhead_ms": round((o - b) / args.tasks * 1000, 2),
        "ratio_ours_over_bare": round(o / b, 3),
        "ratio_dask_over_bare": round(d / b, 3),
        "ratio_ours_over_dask": round(statistics.median(x / y for x, y in zip(ours_t, dask_t, strict=True)), 3),
        "gang_placements_per_s": round(statistics.median(rates), 1),
    }
    print("# medians (ours/Dask: median of the per-repetition ratios); targets: ours/bare <= 1.2, "
          "gang placements >= 100/s")  # fmt: skip
    for k, v in figures.items():
        print(f"{k:26s} {v}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
