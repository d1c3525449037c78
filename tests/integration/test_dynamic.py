"""Dynamic workflows: tasks that submit tasks, cancel and kill, failures that propagate."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from distributed import CancelledError, get_client, rejoin, secede, wait

from balsam_dask import Store
from tests.clusters import ensemble


def square(x: int) -> int:
    return x * x


def fan_out(n: int) -> int:
    """A task that submits tasks of its own (through any Dask client)."""
    client = get_client()
    futures = client.map(square, range(n), pure=False)
    secede()
    total = sum(client.gather(futures))
    rejoin()
    return total


def boom(x: int) -> int:
    raise RuntimeError(f"boom {x}")


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, OSError):
        return False


def _gone_within(pids: list[int], seconds: float) -> float:
    t0 = time.time()
    while any(_alive(p) for p in pids):
        assert time.time() - t0 < seconds, f"processes {pids} still alive after {seconds}s"
        time.sleep(0.02)
    return time.time() - t0


def test_tasks_submit_tasks_with_lineage(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        parent = client.submit(fan_out, 5, key="parent-fan-out")
        assert parent.result() == sum(i * i for i in range(5))
        client.flush()
        store = Store(cluster.store_url)
        try:
            (p,) = store.tasks(key="parent-fan-out")
            children = [t for t in store.tasks(limit=None) if t.submitted_by == p.id]
            assert len(children) == 5 and all(c.state == "FINISHED" for c in children)
        finally:
            store.close()


def secede_until(go: str, done: str) -> str:
    """Waits for the file ``go``, secedes from its worker's thread pool, then waits for ``done``."""
    _wait_for(Path(go))
    secede()
    _wait_for(Path(done))
    return "seceded"


def secede_then_gather(n: int) -> int:
    """Secedes first, then submits its children and waits for them (Dask's usual pattern)."""
    secede()
    client = get_client()
    total = sum(client.gather(client.map(square, range(n), pure=False)))
    rejoin()
    return total


def test_a_task_that_secedes_gives_its_cores_back(tmp_path: Path) -> None:
    """On a full 1-core node, a task that secedes frees its core as Dask frees its thread: the
    tasks queued on the node start (the worker's cores gate opens), the placer places more on
    it, and a seceded task's children run there; its end frees nothing twice."""
    go, done = tmp_path / "go", tmp_path / "done"
    with ensemble(f"sqlite:///{tmp_path}/s.db", tmp_path, nodes=1, cores_per_node=1) as (_cluster, client):
        try:
            parent = client.submit(secede_until, str(go), str(done), key="seceding")
            others = [client.submit(square, i, key=f"after-{i}") for i in range(2)]
            deadline = time.time() + 10
            while not any(n["queued"] for n in client.balsam_status()["nodes"].values()):
                assert time.time() < deadline, "no task was queued on the full node"
                time.sleep(0.02)
            go.touch()
            wait(others, timeout=20)  # before: never (the node looked full to the placer and to its worker)
            assert client.gather(others) == [0, 1]
            client.run(_validate_worker)  # the seceded task holds no cores, none are counted twice
            assert client.submit(secede_then_gather, 4).result(timeout=20) == sum(i * i for i in range(4))
        finally:
            done.touch()
        assert parent.result(timeout=10) == "seceded"
        # the node's one core is free again (nothing held twice, nothing lost)
        assert client.submit(square, 7, key="last").result(timeout=10) == 49
        status = client.balsam_status()
        (node,) = status["nodes"].values()
        assert node["free_cores"] == 1 and not node["running"], node
        client.run(_validate_worker)


def _validate_worker(dask_worker: Any) -> None:
    """Dask's own check of a worker's state: resources held by its tasks + available = total."""
    dask_worker.validate_state()


def test_failed_parent_fails_dependents(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=1, cores_per_node=2) as (cluster, client):
        a = client.submit(boom, 1, key="boom-1")
        b = client.submit(square, a, key="child-of-boom")
        c = client.submit(square, b, key="grandchild-of-boom")
        with pytest.raises(RuntimeError, match="boom 1"):
            c.result()
        client.flush()
        store = Store(cluster.store_url)
        try:
            for key in ("child-of-boom", "grandchild-of-boom"):
                (t,) = store.tasks(key=key)
                last = store.history(t.id)[-1]
                assert t.state == "FAILED" and last.to_state == "FAILED"
                assert "parent boom-1 failed" in (last.message or ""), last.message
        finally:
            store.close()


def test_cancel_and_kill_stop_running_apps(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=2, cores_per_node=2) as (cluster, client):

        def start(tag: str, key: str) -> tuple[object, list[int]]:
            pidfile = tmp_path / key
            script = f"echo $$ > {pidfile}.tmp; sleep 60 & echo $! >> {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"
            fut = client.submit_app(["sh", "-c", script], tags={"group": tag}, key=key)
            _wait_for(pidfile)
            return fut, [int(x) for x in pidfile.read_text().split()]

        f1, pids1 = start("a", "cancel-me")
        f1.cancel()  # type: ignore[attr-defined]
        took = _gone_within(pids1, 1.0)
        f2, pids2 = start("b", "kill-me")
        killed = client.kill(f2)  # type: ignore[arg-type]
        assert killed == ["kill-me"]
        took2 = _gone_within(pids2, 1.0)
        f3, pids3 = start("c", "kill-by-tag-1")
        f4, pids4 = start("c", "kill-by-tag-2")
        assert sorted(client.kill(tags={"group": "c"})) == ["kill-by-tag-1", "kill-by-tag-2"]
        took3 = _gone_within(pids3 + pids4, 1.0)
        for f in (f2, f3, f4):
            with pytest.raises(CancelledError):
                f.result(timeout=10)  # type: ignore[attr-defined]
        client.flush()
        store = Store(cluster.store_url)
        try:
            for key in ("cancel-me", "kill-me", "kill-by-tag-1", "kill-by-tag-2"):
                (t,) = store.tasks(key=key)
                assert t.state == "KILLED", (key, t.state)
                assert [e.to_state for e in store.history(t.id)][-2:] == ["RUNNING", "KILLED"]
        finally:
            store.close()
        assert max(took, took2, took3) < 1.0


def test_kill_requested_from_the_cli(tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/k.db", tmp_path, nodes=1, cores_per_node=2) as (cluster, client):
        pidfile = tmp_path / "pid"
        fut = client.submit_app(["sh", "-c", f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 60"],
                                tags={"exp": "cli"}, key="cli-kill")  # fmt: skip
        _wait_for(pidfile)
        client.flush()  # the task's row is in the store before the CLI looks for it
        import subprocess
        import sys

        cli = str(Path(sys.executable).parent / "balsam-dask")
        db = str(cluster.store_url.database)
        out = subprocess.run(
            [cli, "--store", db, "kill", "--tag", "exp=cli"], capture_output=True, text=True, check=True
        )
        assert out.returncode == 0 and "kill requested for 1" in out.stdout
        _gone_within([int(pidfile.read_text())], 5.0)  # the scheduler polls the store every second
        with pytest.raises(CancelledError):
            fut.result(timeout=10)
        client.flush()
        store = Store(cluster.store_url)
        try:
            (t,) = store.tasks(key="cli-kill")
            assert t.state == "KILLED"
        finally:
            store.close()
