"""A user's driver script for tests/worker/test_orphans.py, run as a process of its own, and the
tasks those tests run.

    python -m tests.worker.orphan_driver WORKDIR KIND[,KIND...]

Starts a LocalEnsembleCluster and a Client, submits one task of each KIND (``app``,
``isolated``, ``timeout``, ``popen``, ``mpi``: see :func:`submit`); each task's processes
record their pids as ``WORKDIR/pids/<kind>-<pid>.pid``. Prints ``RUNNING`` once every task's
processes run, then waits for the tasks, which sleep for minutes: the test signals this
process meanwhile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SLEEP = 300
KINDS = ("app", "isolated", "timeout", "popen", "mpi")


def recording_shell(pids: Path, kind: str) -> list[str]:
    """A shell that records its pid (the file appears whole) and sleeps."""
    path = f"{pids}/{kind}-$$"
    return ["sh", "-c", f"echo $$ > {path}.tmp && mv {path}.tmp {path}.pid && exec sleep {SLEEP}"]


def record_and_sleep(pids: str, kind: str) -> None:
    """An isolated function: records its process's pid and sleeps."""
    path = Path(pids) / f"{kind}-{os.getpid()}"
    path.with_suffix(".tmp").write_text(str(os.getpid()))
    path.with_suffix(".tmp").replace(path.with_suffix(".pid"))
    time.sleep(SLEEP)


def popen_and_wait(pids: str) -> int:
    """A function in the worker's thread that starts a process of its own."""
    return subprocess.Popen(recording_shell(Path(pids), "popen")).wait()


def submit(client: Any, kind: str, pids: Path) -> Any:
    """One task of ``kind``; an MPI task has two ranks on two nodes."""
    if kind == "app":
        return client.submit_app(recording_shell(pids, kind), key=kind)
    if kind == "isolated":
        return client.submit(record_and_sleep, str(pids), kind, isolate=True, key=kind)
    if kind == "timeout":  # a timeout runs the function in a process of its own too
        return client.submit(record_and_sleep, str(pids), kind, timeout=600, key=kind)
    if kind == "popen":
        return client.submit(popen_and_wait, str(pids), key=kind)
    if kind == "mpi":
        return client.submit_mpi(recording_shell(pids, kind), nodes=2, key=kind)
    raise SystemExit(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")


def recorded(pids: Path, kind: str = "*") -> list[int]:
    return [int(f.read_text()) for f in pids.glob(f"{kind}-*.pid")]


def wait_for(pids: Path, kind: str, count: int, timeout: float = 120.0) -> list[int]:
    """The pids of ``kind`` once there are ``count`` of them."""
    deadline = time.time() + timeout
    while len(found := recorded(pids, kind)) < count:
        if time.time() > deadline:
            raise AssertionError(f"{count} {kind} process(es) did not start within {timeout}s")
        time.sleep(0.05)
    return found


def main(workdir: Path, kinds: list[str]) -> None:
    from distributed import wait

    from balsam_dask import Client, LocalEnsembleCluster

    pids = workdir / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    others = [k for k in kinds if k != "mpi"]
    # the gang takes two whole nodes; the other tasks share one more
    nodes = (2 if "mpi" in kinds else 0) + (1 if others else 0)
    with LocalEnsembleCluster(nodes=nodes, cores_per_node=4, workdir=workdir) as cluster, Client(cluster) as client:
        futures = []
        if "mpi" in kinds:  # first: its nodes are free
            futures.append(submit(client, "mpi", pids))
            wait_for(pids, "mpi", 2)
        for kind in others:
            futures.append(submit(client, kind, pids))
        for kind in others:
            wait_for(pids, kind, 1)
        print("RUNNING", flush=True)
        wait(futures)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","))
