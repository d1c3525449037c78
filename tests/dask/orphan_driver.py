"""A user's driver script for tests/dask/test_orphans.py, run as a process of its own.

    python -m tests.dask.orphan_driver WORKDIR KIND[,KIND...]

Starts a LocalEnsembleCluster and a Client, submits one task of each KIND (``app``,
``isolated``, ``timeout``, ``popen``, ``mpi``); each task's processes write their pids to
``WORKDIR/pids/*.pid``. Prints ``RUNNING`` once every task's processes run, then waits for
the tasks, which sleep for minutes: the test signals this process meanwhile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SLEEP = 300
#: A shell that records its pid (written whole: the test never reads half a pid) and sleeps.
RECORD = "echo $$ > {path}.tmp && mv {path}.tmp {path} && exec sleep " + str(SLEEP)


def record_and_sleep(path: str) -> None:
    """An isolated function: records its process's pid and sleeps."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(SLEEP)


def popen_and_wait(path: str) -> int:
    """An in-thread function that starts a process of its own."""
    return subprocess.Popen(["sh", "-c", RECORD.format(path=path)]).wait()


def wait_for(paths: list[Path], timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths):
        if time.time() > deadline:
            raise SystemExit(f"not all of {[str(p) for p in paths]} appeared within {timeout}s")
        time.sleep(0.05)


def main(workdir: Path, kinds: list[str]) -> None:
    from distributed import wait

    from balsam_dask import Client, LocalEnsembleCluster

    pids = workdir / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    # the gang takes two whole nodes; the other tasks share a third
    nodes = 3 if "mpi" in kinds else 1
    with LocalEnsembleCluster(nodes=nodes, cores_per_node=4, workdir=workdir) as cluster, Client(cluster) as client:
        futures = []
        if "mpi" in kinds:
            rank = str(pids / "rank-$PMI_RANK.pid")
            futures.append(client.submit_mpi(["sh", "-c", RECORD.format(path=rank)], nodes=2, key="mpi"))
            wait_for([pids / "rank-0.pid", pids / "rank-1.pid"])
        expected = []
        for kind in kinds:
            path = pids / f"{kind}.pid"
            if kind == "app":
                futures.append(client.submit_app(["sh", "-c", RECORD.format(path=path)], key="app"))
            elif kind == "isolated":
                futures.append(client.submit(record_and_sleep, str(path), isolate=True, key="isolated"))
            elif kind == "timeout":
                futures.append(client.submit(record_and_sleep, str(path), timeout=600, key="timeout"))
            elif kind == "popen":
                futures.append(client.submit(popen_and_wait, str(path), key="popen"))
            elif kind != "mpi":
                raise SystemExit(f"unknown kind {kind!r}: use app, isolated, timeout, popen or mpi")
            else:
                continue
            expected.append(path)
        wait_for(expected)
        print("RUNNING", flush=True)
        wait(futures)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","))
