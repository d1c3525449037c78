"""No process a task started outlives its owner: its worker process (SIGKILLed) or the user's
driver script (SIGTERM, SIGINT, Ctrl-C). Checked by pid: each task's processes record their
pids (tests/worker/orphan_driver.py); a zombie awaiting its parent counts as gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from balsam_dask import Client, Store
from tests.clusters import ensemble
from tests.worker.orphan_driver import recorded, submit, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the tests read /proc"),
]

ROOT = Path(__file__).resolve().parents[2]


def stat(pid: int) -> tuple[str, list[bytes]] | None:
    """Process ``pid``'s command name and the fields of /proc/<pid>/stat after it."""
    try:
        text = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return text[text.find(b"(") + 1 : text.rfind(b")")].decode(), text[text.rfind(b")") + 2 :].split()


def running(pid: int, start: bytes | None = None) -> bool:
    """True while ``pid`` runs (and is the process that started at ``start``)."""
    st = stat(pid)
    return st is not None and st[1][0] not in (b"Z", b"X") and (start is None or st[1][19] == start)


def parents() -> dict[int, int]:
    """Every process's parent."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := stat(int(name))) is not None:
            out[int(name)] = int(st[1][1])
    return out


def tree(root: int) -> dict[int, tuple[bytes, str]]:
    """The descendants of ``root``: pid -> (start time, command name)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, tuple[bytes, str]] = {}
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if (st := stat(pid)) is not None:
            found[pid] = (st[1][19], st[0])
        stack.extend(children.get(pid, ()))
    return found


def still_running(procs: dict[int, tuple[bytes, str]], within: float) -> dict[int, str]:
    """Those of ``procs`` still running after waiting up to ``within`` seconds for all to end."""
    deadline = time.monotonic() + within
    while any(running(p, s) for p, (s, _) in procs.items()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {p: name for p, (s, name) in procs.items() if running(p, s)}


def kill_all(procs: Iterable[int]) -> None:
    """A test's own clean-up: SIGKILL what a failed assertion left running."""
    for pid in procs:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def identify(pids: Iterable[int]) -> dict[int, tuple[bytes, str]]:
    """pid -> (start time, command name) of those of ``pids`` that run."""
    return {pid: (st[1][19], st[0]) for pid in pids if (st := stat(pid)) is not None}


# ---------------------------------------------------------------- the driver dies


@pytest.fixture
def driver_processes() -> Iterator[set[int]]:
    seen: set[int] = set()
    yield seen
    kill_all(seen)


def run_driver(tmp_path: Path, kinds: str, how: str, seen: set[int]) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.worker.orphan_driver", str(tmp_path), kinds], cwd=ROOT,
        stdout=subprocess.PIPE, text=True, start_new_session=True,  # a terminal's foreground group
    )  # fmt: skip
    seen.add(driver.pid)
    try:
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == "RUNNING"
        procs = tree(driver.pid)  # node-workers, their guards, the tasks' processes
        seen.update(procs)
        tasks = recorded(tmp_path / "pids")
        assert tasks and set(tasks) <= set(procs)
        if how == "ctrl-c":
            os.killpg(driver.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        else:
            os.kill(driver.pid, getattr(signal, how))
        driver.wait(timeout=60)
        seen.update(tree(driver.pid))  # nothing, unless a task started processes meanwhile
        left = still_running(procs, within=8)
        assert not left, f"{left} outlived the driver ({how})"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        assert driver.stdout is not None
        driver.stdout.close()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "ctrl-c"])
def test_task_processes_die_with_their_driver(tmp_path: Path, how: str, driver_processes: set[int]) -> None:
    run_driver(tmp_path, "app,isolated,timeout,popen", how, driver_processes)


@pytest.mark.mpi
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_mpi_processes_die_with_their_driver(tmp_path: Path, how: str, driver_processes: set[int]) -> None:
    run_driver(tmp_path, "mpi", how, driver_processes)


# ---------------------------------------------------------------- the worker dies


def owner_of(pid: int, workers: dict[str, int]) -> tuple[str, int]:
    """The worker (address, pid) that ``pid`` descends from."""
    table = parents()
    by_pid = {p: a for a, p in workers.items()}
    while pid in table and pid not in by_pid:
        pid = table[pid]
    assert pid in by_pid, "the task's process descends from no worker"
    return by_pid[pid], pid


@pytest.mark.parametrize("kind", ["app", "isolated", "popen", pytest.param("mpi", marks=pytest.mark.mpi)])
def test_task_processes_die_with_a_killed_worker(tmp_path: Path, kind: str) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    ranks = 2 if kind == "mpi" else 1
    procs: dict[int, tuple[bytes, str]] = {}
    try:
        with ensemble(f"sqlite:///{tmp_path}/o.db", tmp_path, nodes=2, cores_per_node=1) as (cluster, client):
            future = submit(client, kind, pids)
            first = wait_for(pids, kind, ranks)
            _address, worker = owner_of(first[0], client.run(os.getpid))
            procs = tree(worker)  # the task's processes (mpiexec, Hydra's proxies, ranks) and the guard
            assert set(first) <= set(procs)
            os.kill(worker, signal.SIGKILL)
            left = still_running(procs, within=6)  # an MPI launcher has 3 s to stop its ranks
            assert not left, f"{left} outlived their worker"
            # the task runs again, on another worker process, and the store says why
            again = [p for p in wait_for(pids, kind, 2 * ranks) if p not in first]
            retry = identify(again)
            procs.update(retry)
            assert owner_of(again[0], client.run(os.getpid))[1] != worker  # another worker process
            check_lost_attempt(cluster.store_url, kind, client)
            if kind != "popen":  # killing a task stops its processes (a thread's own are its business)
                client.kill(future)
                left = still_running(retry, within=6)
                assert not left, f"{left} outlived client.kill"
        # closing the cluster stops its workers, and with them what their threads started
        left = still_running(procs, within=10)
        assert not left, f"{left} outlived the cluster"
    finally:
        kill_all([*procs, *recorded(pids)])


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_task_processes_die_with_a_batch_node_worker(tmp_path: Path, sig: str) -> None:
    """``python -m balsam_dask.node_worker`` (as a job script starts it) stopped by the batch
    system: SIGTERM at the job's end, SIGKILL after it."""
    pids = tmp_path / "pids"
    pids.mkdir()
    procs: dict[int, tuple[bytes, str]] = {}
    with ensemble(f"sqlite:///{tmp_path}/o.db", tmp_path, nodes=0) as (cluster, client):
        with open(tmp_path / "node.log", "wb") as log:
            node = subprocess.Popen(
                [sys.executable, "-m", "balsam_dask.node_worker", cluster.scheduler_address, "--name-prefix", "batch",
                 "--cores", "2", "--workdir", str(tmp_path / "work")],
                cwd=ROOT, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        try:
            client.wait_for_workers(1, timeout=60)
            futures = [submit(client, kind, pids) for kind in ("app", "isolated")]
            for kind in ("app", "isolated"):
                wait_for(pids, kind, 1)
            procs = tree(node.pid)  # the worker process, its guard, the tasks' processes
            assert set(recorded(pids)) <= set(procs)
            os.kill(node.pid, getattr(signal, sig))
            node.wait(timeout=60)
            left = still_running(procs, within=10)
            assert not left, f"{left} outlived the node-worker ({sig})"
            client.cancel(futures)
        finally:
            kill_all([node.pid, *procs, *recorded(pids)])


def check_lost_attempt(store_url: str, key: str, client: Client) -> None:
    client.flush()
    store = Store(store_url)
    try:
        (t,) = store.tasks(key=key)
        hist = store.history(t.id)
        lost = [e for e in hist if e.to_state == "RESTART_READY"]
        assert lost and "attempt lost" in (lost[0].message or ""), [(e.to_state, e.message) for e in hist]
        assert [e.attempt for e in hist if e.to_state == "RUNNING"] == [1, 2]
    finally:
        store.close()
