"""Ensemble allocations on the real local Slurm cluster (n1..n4): scaling from the backlog
with the packing policy, and tasks surviving a job's --time limit and a scancel."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from balsam_dask import Client, Store
from tests.deploy.test_slurm import slurm_available

pytestmark = [pytest.mark.slurm, pytest.mark.mpi, pytest.mark.slow]


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def first_attempt_outlives_the_job(marker: str) -> str:
    """Runs past the end of its first job; later attempts return at once."""
    p = Path(marker)
    if not p.exists():
        p.write_text("started")
        time.sleep(600)
    return p.name


def worker_count(client: Client) -> int:
    return len(client.scheduler_info()["workers"])


def wait_until(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


@pytest.mark.timeout(600)
def test_backlog_scales_from_zero_to_jobs_and_back(tmp_path: Path) -> None:
    slurm_available()
    from balsam_dask.deploy.clusters import SlurmEnsembleCluster

    cmd = [sys.executable, "-c", "import time; time.sleep(1)"]
    with SlurmEnsembleCluster(cores_per_node=4, walltime="00:05:00", log_directory=str(tmp_path),
                              workdir=str(tmp_path), poll_interval=1.0, drain_margin=10) as cluster, \
            Client(cluster) as client:  # fmt: skip
        cluster.adapt(min_nodes=1, max_nodes_per_job=4, max_total_nodes=4, max_queued_jobs=2, min_walltime=120,
                      max_walltime=600, idle_timeout=3, default_task_walltime=20, interval=0.5)  # fmt: skip
        assert worker_count(client) == 0
        phase1 = [client.submit_mpi(cmd, nodes=2, ranks_per_node=2, walltime=20, key="gang-2")]
        phase1 += [client.submit(nap, 1, cores=1, walltime=20, key=f"serial-a{i}") for i in range(6)]
        t0 = time.time()
        client.gather(phase1)
        del phase1  # results still referenced would keep their nodes (never retired from under them)
        sizes = sorted(j["nodes"] for j in cluster.jobs.values())
        assert sizes == [2], cluster.jobs
        print(f"phase 1 {time.time() - t0:.1f}s")
        phase2 = client.submit_mpi(cmd, nodes=4, ranks_per_node=1, walltime=20, key="gang-4")
        phase2.result(timeout=240)
        print(f"phase 2 {time.time() - t0:.1f}s")
        tail = client.gather([client.submit(nap, 0.5, cores=2, walltime=20, key=f"serial-b{i}") for i in range(4)])
        assert tail == [0.5] * 4
        del phase2
        wait_until(lambda: worker_count(client) == 0, 120, "the cluster to return to 0 nodes when idle")
        print(f"back to 0 {time.time() - t0:.1f}s")
        wait_until(lambda: all(j["state"] not in ("PENDING", "QUEUED", "RUNNING") for j in cluster.jobs.values()),
                   60, "every job to end")  # fmt: skip
        client.flush()
        store = Store(cluster.store_url)
        try:
            allocs = store.allocations()
            assert sorted(a.nodes for a in allocs) == [2, 4], allocs
            assert all(a.system == "slurm" and a.scheduler_id and a.started_at and a.ended_at for a in allocs)
            assert {a.state for a in allocs} <= {"CANCELLED", "FINISHED"}
            assert store.count(state="FINISHED") == 12
            (g4,) = store.tasks(key="gang-4")
            run = [e for e in store.history(g4.id) if e.to_state == "RUNNING"][-1]
            assert sorted(run.hosts.split(",")) == ["n1", "n2", "n3", "n4"]
        finally:
            store.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["time-limit", "scancel"])
def test_running_tasks_survive_the_end_of_their_job(tmp_path: Path, how: str) -> None:
    slurm_available()
    from balsam_dask.deploy.clusters import SlurmEnsembleCluster

    # drain_margin=None: the workers stay until Slurm stops them, so the job really hits --time
    with SlurmEnsembleCluster(cores_per_node=4, walltime="00:01:00", log_directory=str(tmp_path),
                              workdir=str(tmp_path), poll_interval=1.0, drain_margin=None) as cluster, \
            Client(cluster) as client:  # fmt: skip
        first = cluster.request(1)
        client.wait_for_workers(1, timeout=60)
        futures = [client.submit(first_attempt_outlives_the_job, str(tmp_path / f"m{i}"), cores=2, key=f"long-{i}")
                   for i in range(2)]  # fmt: skip
        wait_until(lambda: all(f.status == "pending" for f in futures) and
                   sum(len(p) for p in client.processing().values()) == 2, 30, "both tasks to start")  # fmt: skip
        if how == "scancel":
            time.sleep(2)
            subprocess.run(["scancel", cluster.jobs[first]["job_id"]], check=True, timeout=30)
        # the tasks of the first job are lost with it: a second job runs them again
        wait_until(lambda: worker_count(client) == 0, 150, "the first job to end")
        cluster.request(1, walltime="00:05:00")
        assert client.gather(futures) == ["m0", "m1"]
        # the workers can be gone (and the tasks done again) before squeue stops listing the job
        # as COMPLETING, a RUNNING allocation: its end is recorded at the next poll after that
        wait_until(lambda: cluster.jobs[first]["state"] not in ("QUEUED", "RUNNING"), 60, "the first job's end")
        client.flush()
        store = Store(cluster.store_url)
        try:
            for i in range(2):
                (t,) = store.tasks(key=f"long-{i}")
                states = [e.to_state for e in store.history(t.id)]
                assert states.count("RUNNING") == 2 and states[-1] == "FINISHED", states
                timeout = next(e for e in store.history(t.id) if e.to_state == "RUN_TIMEOUT")
                assert (timeout.message or "").startswith("walltime: allocation"), timeout.message
            ended = store.allocation(cluster.jobs[first]["alloc"])
            assert ended.state == ("TIMEOUT" if how == "time-limit" else "CANCELLED"), ended
        finally:
            store.close()


def squeue_nodes(job_id: str) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--format=%N", "--jobs", job_id], capture_output=True, text=True,
                         timeout=30).stdout.strip()  # fmt: skip
    if not out:
        return []
    hosts = subprocess.run(["scontrol", "show", "hostnames", out], capture_output=True, text=True, timeout=30)
    return hosts.stdout.split()


def batch_host(job_id: str) -> str:
    """The node that runs the job's script (and our node-0 worker)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    return next(f.split("=", 1)[1] for f in out.split() if f.startswith("BatchHost="))


@pytest.mark.timeout(300)
def test_idle_nodes_of_a_running_job_are_given_back_to_slurm(tmp_path: Path) -> None:
    """The policy releases the idle nodes of a 3-node job nothing waiting can use: Slurm's
    job shrinks (scontrol update NodeList=...) while a task runs on, undisturbed, elsewhere."""
    slurm_available()
    from balsam_dask.deploy.clusters import SlurmEnsembleCluster

    with SlurmEnsembleCluster(cores_per_node=4, walltime="00:05:00", log_directory=str(tmp_path),
                              workdir=str(tmp_path), poll_interval=1.0, max_nodes_per_job=3) as cluster, \
            Client(cluster) as client:  # fmt: skip
        name = cluster.request(3)
        client.wait_for_workers(3, timeout=120)
        job_id = cluster.jobs[name]["job_id"]
        nodes = squeue_nodes(job_id)  # any 3 of n1-n4: a node still completing an earlier job is skipped
        assert len(nodes) == 3 and set(nodes) <= {"n1", "n2", "n3", "n4"}, nodes
        first = batch_host(job_id)
        long = client.submit(nap, 8.0, cores=4, walltime=60, key="long")
        tasks = cluster.scheduler.tasks
        wait_until(lambda: "long" in tasks and tasks["long"].processing_on is not None, 30, "the long task to start")
        long_node = tasks["long"].processing_on.name
        cluster.adapt(max_nodes_per_job=3, max_total_nodes=3, min_walltime=120, max_walltime=600, idle_timeout=1,
                      default_task_walltime=60, interval="0.2s")  # fmt: skip
        kept = {f"{name}-0", long_node}
        wait_until(lambda: {w["name"] for w in client.scheduler_info()["workers"].values()} == kept, 30,
                   "the idle nodes to be released")  # fmt: skip
        wait_until(lambda: len(squeue_nodes(job_id)) == len(kept), 30, "Slurm to shrink the job")
        remaining = squeue_nodes(job_id)
        assert first in remaining and cluster.jobs[name]["state"] == "RUNNING"  # the batch host stays
        assert not long.done()
        assert long.result(timeout=60) == 8.0
        del long
        wait_until(lambda: worker_count(client) == 0, 60, "the job to end when idle")
        client.flush()
        store = Store(cluster.store_url)
        try:
            (alloc,) = store.allocations()
            assert {r["host"] for r in alloc.info["released"]} == set(nodes) - set(remaining)
            assert alloc.scheduler_id == job_id and alloc.nodes == 3
            (t,) = store.tasks(key="long")
            assert [e.to_state for e in store.history(t.id)].count("RUNNING") == 1 and t.state == "FINISHED"
        finally:
            store.close()
