"""Exact placement of balsam tasks: cores, GPUs, walltime, priorities — checked from the store."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from balsam_dask import current_task
from balsam_dask.protocol import ENV_VAR, PRELOAD, NodeConfig
from tests.clusters import ensemble
from tests.history import idle_while_waiting, max_overlap_cores, runs


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def gpu_env() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def my_gpus(seconds: float) -> tuple[str, ...]:
    time.sleep(seconds)
    ctx = current_task()
    assert ctx is not None
    return ctx.gpu_ids


def test_mixed_cores_never_oversubscribe_and_never_idle(store_url: str, tmp_path: Path) -> None:
    rng = random.Random(7)
    with ensemble(store_url, tmp_path, nodes=2, cores_per_node=4) as (cluster, client):
        futures = []
        for i in range(60):
            cores = rng.choice([1, 1, 2, 4])
            futures.append(client.submit(nap, rng.uniform(0.1, 0.4), cores=cores, tags={"mix": "1"}, key=f"mix-{i}"))
        client.gather(futures)
        client.flush()
        from balsam_dask import Store

        store = Store(cluster.store_url)
        try:
            rs = runs(store, store.tasks(tags={"mix": "1"}, limit=None))
        finally:
            store.close()
    assert len(rs) == 60 and len({r.worker for r in rs}) == 2
    peaks = max_overlap_cores(rs, 4)
    assert all(p <= 4 for p in peaks.values()), peaks
    assert max(peaks.values()) == 4  # the nodes were actually filled
    assert idle_while_waiting(rs, 4, slack=0.25) == []


def test_gpus_are_assigned_exactly(tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/g.db", tmp_path, nodes=2, cores_per_node=4, gpus_per_node=2) as (
        cluster,
        client,
    ):
        apps = [client.submit_app("sh -c 'echo $CUDA_VISIBLE_DEVICES; sleep 0.3'", gpus=1) for _ in range(8)]
        isolated = client.submit(gpu_env, gpus=2, isolate=True)
        inthread = [client.submit(my_gpus, 0.2, gpus=1, pure=False) for _ in range(4)]
        results = client.gather(apps)
        assert isolated.result() in ("0,1", "1,0")
        for r in results:
            assert r.stdout_tail.strip() in ("0", "1") and r.gpu_ids == (r.stdout_tail.strip(),)
        assert all(len(g) == 1 for g in client.gather(inthread))
        client.flush()
        from balsam_dask import Store

        store = Store(cluster.store_url)
        try:
            spans = []
            for t in store.tasks(limit=None):
                for e in store.history(t.id):
                    if e.to_state == "RUNNING" and t.gpus:
                        end = next(x.ts for x in store.history(t.id) if x.to_state == "FINISHED")
                        gpus = (e.message or "").removeprefix("gpus=").split(",")
                        assert len(gpus) == t.gpus, (e.message, t.gpus)
                        spans.extend((e.worker, g, e.ts, end) for g in gpus)
        finally:
            store.close()
        assert len(spans) == 8 + 2 + 4
        # at no moment do two runs on one node hold the same GPU id
        for w, g, a, b in spans:
            clash = [s for s in spans if s[0] == w and s[1] == g and s[2] < b and a < s[3] and s != (w, g, a, b)]
            assert not clash, (w, g, a, b, clash)
    with pytest.raises(Exception, match="gpus=3 cannot run on any node"):
        with ensemble(f"sqlite:///{tmp_path}/g2.db", tmp_path, nodes=1, cores_per_node=2, gpus_per_node=2) as (_, c):
            c.submit(gpu_env, gpus=3)


def test_walltime_aware_placement(tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/w.db", tmp_path, nodes=1, cores_per_node=2, walltime=60) as (cluster, client):
        long_node = NodeConfig(name="long", alloc_id="long-alloc", cores=2, end_time=time.time() + 3600,
                               workdir_root=str(tmp_path / "wd"))  # fmt: skip
        env = {**os.environ, ENV_VAR: long_node.to_env()}
        proc = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address, "--nthreads", "2",
             "--name", "long", "--preload", PRELOAD, "--no-dashboard", "--nanny"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client.wait_for_workers(2, timeout=60)
            info = client.scheduler_info()["workers"]
            long_addr = next(a for a, w in info.items() if w["name"] == "long")
            long_tasks = [client.submit(current_worker_name, walltime=600, pure=False) for _ in range(6)]
            short_tasks = [client.submit(current_worker_name, walltime=10, pure=False) for _ in range(6)]
            assert set(client.gather(long_tasks)) == {"long"}
            assert set(client.gather(short_tasks)) <= {"long", "node-0"}
            never = client.submit(current_worker_name, walltime=7200, pure=False)
            time.sleep(1.5)
            assert never.status == "pending"  # no node has two hours left: it waits for an allocation
            client.cancel(never)
            assert long_addr
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def current_worker_name() -> str:
    from distributed import get_worker

    return str(get_worker().name)


def test_priorities(tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/p.db", tmp_path, nodes=1, cores_per_node=1) as (cluster, client):
        blocker = client.submit(nap, 1.0, key="blocker")
        time.sleep(0.3)
        low = [client.submit(nap, 0.05, priority=0, key=f"low-{i}") for i in range(4)]
        high = [client.submit(nap, 0.05, priority=10, key=f"high-{i}") for i in range(4)]
        client.gather([blocker, *low, *high])
        client.flush()
        from balsam_dask import Store

        store = Store(cluster.store_url)
        try:
            order = sorted(runs(store, store.tasks(limit=None)), key=lambda r: r.start)
        finally:
            store.close()
    keys = [r.task.key for r in order]
    assert keys[0] == "blocker"
    assert set(keys[1:5]) == {f"high-{i}" for i in range(4)}, keys
    assert set(keys[5:]) == {f"low-{i}" for i in range(4)}, keys


def test_a_wide_task_is_not_starved_by_a_stream_of_one_core_tasks(tmp_path: Path) -> None:
    """A 2-core task behind a steady stream of 1-core tasks on one 2-core node: without a
    hold the node never has 2 cores free at once; with one (hold_after=0.5 s, checked at the
    plugin's 1 s poll) it drains and the wide task starts within seconds."""
    from distributed import as_completed

    with ensemble(f"sqlite:///{tmp_path}/s.db", tmp_path, nodes=1, cores_per_node=2,
                  plugin_options={"hold_after": 0.5}) as (_cluster, client):  # fmt: skip
        first = client.submit(nap, 0.3, cores=1, pure=False)
        time.sleep(0.15)  # the two cores free up at different times, never together
        stream = as_completed([first, client.submit(nap, 0.3, cores=1, pure=False)])
        time.sleep(0.05)
        wide = client.submit(nap, 0.1, cores=2, pure=False, key="wide")
        for _ in range(4):  # a backlog of narrow tasks behind it, ready for each freed core
            stream.add(client.submit(nap, 0.3, cores=1, pure=False))
        t0 = time.monotonic()
        for _ in stream:  # each finished narrow task is replaced at once: the node never empties by itself
            if wide.done() or time.monotonic() - t0 > 20:
                break
            stream.add(client.submit(nap, 0.3, cores=1, pure=False))
        assert wide.result(timeout=30) == 0.1
        waited = time.monotonic() - t0
        assert waited < 6.0, waited


def test_full_nodes_queue_tasks_that_start_when_their_cores_free(tmp_path: Path) -> None:
    """Prefetch end to end: with a deep backlog the plugin queues tasks on the full node, the
    worker starts each when the previous one ends, and the history stays exact (RUNNING is
    recorded at the start, never two at once on one core)."""
    with ensemble(f"sqlite:///{tmp_path}/q.db", tmp_path, nodes=1, cores_per_node=1) as (cluster, client):
        futures = [client.submit(nap, 0.05, key=f"q-{i}") for i in range(30)]
        seen_queued = 0
        while not all(f.done() for f in futures):
            status = client.balsam_status()
            seen_queued = max(seen_queued, *(len(n["queued"]) for n in status["nodes"].values()))
            time.sleep(0.02)
        client.gather(futures)
        client.flush()
        status = client.balsam_status()
        assert not status["errors"] and not status["anomalies"]
        from balsam_dask import Store

        store = Store(cluster.store_url)
        try:
            rs = runs(store, store.tasks(limit=None))
        finally:
            store.close()
    assert seen_queued == 2  # the default depth, reached while the backlog was deep
    assert len(rs) == 30 and max(max_overlap_cores(rs, 1).values()) == 1
    for r in rs:
        assert r.start <= r.done <= r.end
    queued = [r for r in rs if r.queued_at is not None]  # their RUNNING event says since when they waited
    assert len(queued) >= 10 and all(r.ready <= r.queued_at <= r.start for r in queued)  # type: ignore[operator]
