"""MPI tasks on LocalEnsembleCluster with real MPICH (wheels): commands, Python functions, gangs."""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from pathlib import Path

import pytest

from balsam_dask import Store
from balsam_dask.errors import InvalidSpec, LauncherError, MPITaskError
from tests.clusters import ensemble
from tests.history import Run, max_overlap_cores, runs

pytestmark = pytest.mark.mpi

# each rank writes its own file in the task's work directory: ranks' stdout lines may interleave
ALLREDUCE = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD; s = c.allreduce(c.rank + 1); "
    "open(f'rank-{c.rank}.txt', 'w').write(f'{c.rank} {c.size} {s}')"
)


def rank_lines(result) -> list[list[int]]:  # type: ignore[no-untyped-def]
    files = sorted(result.workdir.glob("rank-*.txt"))
    return [[int(x) for x in f.read_text().split()] for f in files]


def allreduce(comm, scale: int) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    return comm.rank, comm.size, comm.allreduce((comm.rank + 1) * scale)


def fails_on_rank_1(comm) -> int:  # type: ignore[no-untyped-def]
    if comm.rank == 1:
        raise ValueError("rank one is unhappy")
    comm.barrier()  # rank 0 would wait forever without the abort
    return 0


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.slow
def test_mpi_commands_and_functions(tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/m.db", tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        two = client.submit_mpi([sys.executable, "-c", ALLREDUCE], ranks_per_node=2, name="two")
        four = client.submit_mpi([sys.executable, "-c", ALLREDUCE], nodes=2, ranks_per_node=2, name="four")
        fn = client.submit_mpi(allreduce, 10, nodes=2, ranks_per_node=2)
        r2, r4 = two.result(timeout=120), four.result(timeout=120)
        assert r2.returncode == 0 and rank_lines(r2) == [[0, 2, 3], [1, 2, 3]]
        assert rank_lines(r4) == [[i, 4, 10] for i in range(4)]
        assert fn.result(timeout=120) == (0, 4, 100)  # rank 0's value
        bad = client.submit_mpi(fails_on_rank_1, ranks_per_node=2, key="mpi-fails")
        with pytest.raises(MPITaskError, match="rank 1 raised ValueError: rank one is unhappy") as ei:
            bad.result(timeout=120)
        assert ei.value.rank == 1 and "fails_on_rank_1" in ei.value.traceback_text
        client.flush()
        store = Store(cluster.store_url)
        try:
            (t,) = store.tasks(name="four")
            running = next(e for e in store.history(t.id) if e.to_state == "RUNNING")
            assert t.nodes == 2 and t.ranks_per_node == 2 and len(running.hosts.split(",")) == 2
            (b,) = store.tasks(key="mpi-fails")
            assert b.state == "FAILED" and "rank one is unhappy" in (b.error_tail or "")
        finally:
            store.close()


@pytest.mark.slow
def test_gangs_and_serial_never_overlap(store_url: str, tmp_path: Path) -> None:
    rng = random.Random(3)
    with ensemble(store_url, tmp_path, nodes=4, cores_per_node=2) as (cluster, client):
        futures = []
        for i in range(40):
            futures.append(client.submit(nap, rng.uniform(0.05, 0.25), cores=rng.choice([1, 2]), key=f"s-{i}"))
            if i % 8 == 3:
                k = (2, 3, 4, 2, 3)[i // 8]
                cmd = [sys.executable, "-c", "import time; time.sleep(0.3)"]
                futures.append(client.submit_mpi(cmd, nodes=k, ranks_per_node=2, key=f"g{k}-{i}"))
        client.gather(futures)
        client.flush()
        store = Store(cluster.store_url)
        try:
            tasks = store.tasks(limit=None)
            rs = runs(store, tasks)
            workers_of = {}
            for t in tasks:
                if t.nodes > 1:
                    running = [e for e in store.history(t.id) if e.to_state == "RUNNING"][-1]
                    workers_of[t.id] = running.message.split("workers=")[1].split()[0].split(",")
        finally:
            store.close()
    gangs = [r for r in rs if r.task.nodes > 1]
    assert sorted(r.task.nodes for r in gangs) == [2, 2, 3, 3, 4]
    expanded = []
    for r in rs:
        if r.task.nodes == 1:
            expanded.append(r)
            continue
        nodes = workers_of[r.task.id]
        assert len(set(nodes)) == r.task.nodes and nodes[0] == r.worker
        expanded += [dataclasses.replace(r, worker=w) for w in nodes]  # the gang holds every core of each node
    peaks = max_overlap_cores(expanded, 2)
    assert len(peaks) == 4 and all(p <= 2 for p in peaks.values()), peaks


def test_bad_mpi_input(ens) -> None:  # type: ignore[no-untyped-def]
    _, client = ens
    with pytest.raises(InvalidSpec, match=r"nodes=3 is more than any allocation can have \(at most 2 nodes"):
        client.submit_mpi(["true"], nodes=3)
    with pytest.raises(InvalidSpec, match="cores=8, gpus=0 cannot run on any node"):
        client.submit_mpi(["true"], ranks_per_node=8)
    with pytest.raises(LauncherError, match="unknown launcher 'mpiexecc'"):
        client.submit_mpi(["true"], launcher="mpiexecc")
    with pytest.raises(InvalidSpec, match="a command takes params"):
        client.submit_mpi(["true"], 1, 2)
    missing = client.submit_mpi(["/no/such/binary"], ranks_per_node=2)
    with pytest.raises(InvalidSpec, match="executable '/no/such/binary' not found on node-"):
        missing.result(timeout=60)


@pytest.mark.slow
def test_wide_gang_does_not_starve_and_serial_backfills(tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/s.db", tmp_path, nodes=4, cores_per_node=2) as (cluster, client):
        stream = [client.submit(nap, 0.4, key=f"early-{i}") for i in range(16)]  # fills every core
        time.sleep(0.5)
        cmd = [sys.executable, "-c", "import time; time.sleep(0.5)"]
        three = client.submit_mpi(cmd, nodes=3, ranks_per_node=1, key="gang-3")
        stream += [client.submit(nap, 0.2, key=f"late-{i}") for i in range(60)]  # a continuous stream behind it
        client.gather([three, *stream])
        client.flush()
        store = Store(cluster.store_url)
        try:
            tasks = store.tasks(limit=None)
            rs = {r.task.key: r for r in runs(store, tasks)}
            (g,) = [t for t in tasks if t.key == "gang-3"]
            gang_run = [e for e in store.history(g.id) if e.to_state == "RUNNING"][-1]
            gang_nodes = gang_run.message.split("workers=")[1].split()[0].split(",")
        finally:
            store.close()
    gang = rs["gang-3"]
    on_gang_nodes = [r for k, r in rs.items() if k != "gang-3" and r.worker in gang_nodes]

    # no serial task was sent to a reserved node between the gang becoming ready and starting (a task
    # queued there before the gang arrived may start if its node ran ahead of the steal request)
    def there_before(r: Run) -> bool:
        return r.start <= gang.ready or (r.queued_at is not None and r.queued_at <= gang.ready)

    intruders = [r.task.key for r in on_gang_nodes if gang.ready < r.start < gang.start and not there_before(r)]
    assert intruders == [], intruders
    # it started as soon as the tasks already on its nodes finished
    blockers = [r.end for r in on_gang_nodes if there_before(r) and gang.ready < r.end]
    assert gang.start - max(blockers, default=gang.ready) < 0.5
    # the fourth node kept taking serial tasks meanwhile (backfill)
    free_node = {r.worker for r in rs.values()} - set(gang_nodes)
    assert len(free_node) == 1
    backfilled = [r for r in rs.values() if r.worker in free_node and gang.ready < r.start < gang.start + 0.5]
    assert backfilled, "the node no gang could use stayed idle"


@pytest.mark.parametrize("who", ["follower", "leader"])
@pytest.mark.slow
def test_gang_survives_a_lost_node(tmp_path: Path, who: str) -> None:
    import os
    import signal

    with ensemble(f"sqlite:///{tmp_path}/f.db", tmp_path, nodes=3, cores_per_node=1) as (cluster, client):
        marker = tmp_path / "attempts"
        script = f"import time; open({str(marker)!r}, 'a').write('x'); time.sleep(3)"
        fut = client.submit_mpi([sys.executable, "-c", script], nodes=2, ranks_per_node=1, key="gang-lost")
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        client.flush()
        store = Store(cluster.store_url)
        try:
            (t,) = store.tasks(key="gang-lost")
            running = [e for e in store.history(t.id) if e.to_state == "RUNNING"][-1]
            victim = running.message.split("workers=")[1].split()[0].split(",")[1 if who == "follower" else 0]
            addr = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}[victim]
            pid = client.run(os.getpid, workers=[addr])[addr]
            os.kill(pid, signal.SIGKILL)  # a node of the running gang dies
            assert fut.result(timeout=120).returncode == 0
            client.flush()
            hist = store.history(t.id)
        finally:
            store.close()
        states = [e.to_state for e in hist]
        assert states.count("RUNNING") == 2 and states[-2:] == ["RUN_DONE", "FINISHED"]
        lost = next(e for e in hist if e.to_state == "RESTART_READY")
        expected = f"gang node {victim} left" if who == "follower" else f"worker {victim} left"
        assert expected in (lost.message or ""), lost.message
        assert len(marker.read_text()) >= 3  # 2 ranks ran in the first attempt, again in the second
        status = client.balsam_status()
        assert status["running"] == 0 and all(not n["reserved_by"] for n in status["nodes"].values())


@pytest.mark.slow
def test_reservation_survives_memory_pause(tmp_path: Path) -> None:
    from distributed.core import Status

    def set_status(status: str, dask_worker=None) -> None:  # type: ignore[no-untyped-def]
        dask_worker.status = Status[status]  # what the worker's memory monitor does

    with ensemble(f"sqlite:///{tmp_path}/p.db", tmp_path, nodes=2, cores_per_node=1) as (cluster, client):
        blocker = client.submit(nap, 3.0, key="blocker")
        time.sleep(0.8)
        cmd = [sys.executable, "-c", "print('gang ran')"]
        gang = client.submit_mpi(cmd, nodes=2, ranks_per_node=1, key="gang-2")
        time.sleep(0.5)  # both nodes are now reserved; one drains the blocker
        status = client.balsam_status()
        reserved = [a for a, n in status["nodes"].items() if n["reserved_by"]]
        assert len(reserved) == 2
        idle = next(a for a in reserved if not status["nodes"][a]["running"])
        client.run(set_status, "paused", workers=[idle])
        time.sleep(0.3)
        client.run(set_status, "running", workers=[idle])  # the worker un-pauses itself
        time.sleep(0.3)
        assert client.scheduler_info()["workers"][idle]["status"] == "paused"  # still held for the gang
        with __import__("distributed").Client(cluster.scheduler_address) as plain:
            side = plain.submit(nap, 0.0, key="plain-side-task")
            time.sleep(0.5)
            assert side.status == "pending"  # plain Dask work is kept off the held nodes...
            assert gang.result(timeout=60).stdout.count("gang ran") == 2
            assert side.result(timeout=30) == 0.0  # ...and runs once they are released
        assert blocker.result() == 3.0
