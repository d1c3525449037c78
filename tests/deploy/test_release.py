"""Idle nodes of a running allocation given back while its other nodes work (Decision.releases),
on a real LocalEnsembleCluster and store; the batch systems' commands are tested with the
fakes (tests/deploy/test_pbs_lsf.py) and on the real Slurm cluster (test_slurm_alloc.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from balsam_dask import Client, Store
from balsam_dask.errors import InvalidSpec
from tests.clusters import ensemble


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def wait_until(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def worker_names(client: Client) -> set[str]:
    return {w["name"] for w in client.scheduler_info()["workers"].values()}


@pytest.mark.timeout(120)
def test_policy_gives_back_idle_nodes_while_a_long_task_runs(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=0, cores_per_node=1, max_nodes_per_job=3) as (cluster, client):
        name = cluster.request(3, 300)
        client.wait_for_workers(3, timeout=60)
        short = client.map(nap, [0.2] * 6, cores=1, walltime=30, pure=False)
        assert client.gather(short) == [0.2] * 6
        del short  # results still referenced keep their nodes
        long = client.submit(nap, 6.0, cores=1, walltime=30, key="long")
        tasks = cluster.scheduler.tasks
        wait_until(lambda: "long" in tasks and tasks["long"].processing_on is not None, 10, "the long task to start")
        ts = tasks["long"]
        t_long = time.time()
        cluster.adapt(max_nodes_per_job=3, max_total_nodes=3, min_walltime=60, idle_timeout=1,
                      default_task_walltime=30, interval="0.2s")  # fmt: skip
        long_node = ts.processing_on.name
        # every idle node but the job's first goes while the long task runs on
        expected = {f"{name}-{i}" for i in (1, 2)} - {long_node}
        wait_until(lambda: worker_names(client) == {f"{name}-0", long_node}, 10, "the idle nodes to be released")
        assert long.result(timeout=30) == 6.0
        t_done = time.time()
        del long
        # then the whole allocation, once all of it is idle
        wait_until(lambda: not worker_names(client), 20, "the allocation to end")
        client.flush()
        store = Store(cluster.store_url)
        try:
            (alloc,) = store.allocations()
            assert alloc.nodes == 3 and alloc.state == "CANCELLED"
            released = alloc.info["released"]
            assert {r["worker"] for r in released} == expected
            assert all(t_long + 1.0 <= r["at"] < t_done for r in released)  # after idle_timeout, mid-task
            assert (alloc.info["cores_per_node"], alloc.info["gpus_per_node"]) == (1, 0)  # kept by the release
            assert store.count(state="FINISHED") == 7
        finally:
            store.close()
        decisions = [d for _, d in cluster._adaptive.decisions if d.releases]
        assert decisions and "no waiting task needs it" in decisions[0].reason


@pytest.mark.timeout(60)
def test_release_nodes_rejects_bad_names_and_keeps_busy_nodes(tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/b.db", tmp_path, nodes=3, cores_per_node=1) as (cluster, client):
        client.wait_for_workers(3, timeout=60)
        with pytest.raises(InvalidSpec, match=r"no running allocation named 'nope'; running ones are: node"):
            cluster.release_nodes("nope", ["nope-1"])
        with pytest.raises(InvalidSpec, match=r"workers=\['other-1'\] is invalid: .* e.g. \['node-1'\]"):
            cluster.release_nodes("node", ["other-1"])
        with pytest.raises(InvalidSpec, match=r"workers='node-1' is invalid"):
            cluster.release_nodes("node", "node-1")
        busy = client.map(nap, [3.0, 3.0, 3.0], cores=1, pure=False)
        wait_until(lambda: len(cluster.plugin.placer.running()) == 3, 10, "three running tasks")
        assert cluster.release_nodes("node", ["node-1", "node-2"]) == []  # busy: kept
        assert cluster.releasable_nodes() == {}
        assert client.gather(busy) == [3.0] * 3
        assert cluster.releasable_nodes() == {}  # their results are still referenced
        del busy
        wait_until(lambda: sorted(cluster.releasable_nodes().get("node", [])) == ["node-1", "node-2"], 10,
                   "idle nodes")  # fmt: skip
        assert cluster.release_nodes("node", ["node-2", "node-0"]) == ["node-2"]  # never the first node
        wait_until(lambda: worker_names(client) == {"node-0", "node-1"}, 10, "node-2 to leave")
        assert client.submit(nap, 0.1, cores=1).result(timeout=30) == 0.1
