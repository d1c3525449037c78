"""Faults and recovery, each step recorded: retries, timeouts, handlers, lost workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from balsam_dask import Store, TaskTimeout
from balsam_dask.errors import AppError
from tests.clusters import ensemble


def flaky(path: str, fail_times: int) -> str:
    """Fails the first ``fail_times`` calls (counted in a file), then succeeds."""
    p = Path(path)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < fail_times:
        raise ValueError(f"flaky failure {n + 1}")
    return f"ok after {n + 1}"


def sleeper(seconds: float, marker: str) -> str:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def states(store: Store, key: str) -> list[str]:
    (t,) = store.tasks(key=key)
    return [e.to_state for e in store.history(t.id)]


def test_retries_and_error_tails(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=1, cores_per_node=2) as (cluster, client):
        ok = client.submit(flaky, str(tmp_path / "a"), 2, retries=2, key="flaky-ok")
        assert ok.result() == "ok after 3"
        bad = client.submit(flaky, str(tmp_path / "b"), 5, retries=1, key="flaky-bad")
        with pytest.raises(ValueError, match="flaky failure 2"):
            bad.result()

        def on_error(exc: BaseException, attempt: int) -> bool:
            return "failure 1" in str(exc)  # retry the first failure only

        h = client.submit(flaky, str(tmp_path / "c"), 5, on_error=on_error, key="flaky-handler")
        with pytest.raises(ValueError, match="flaky failure 2"):
            h.result()
        client.flush()
        store = Store(cluster.store_url)
        try:
            assert states(store, "flaky-ok") == [
                "READY", "RUNNING", "RUN_ERROR", "RESTART_READY", "RUNNING", "RUN_ERROR", "RESTART_READY",
                "RUNNING", "RUN_DONE", "FINISHED",
            ]  # fmt: skip
            (t,) = store.tasks(key="flaky-ok")
            assert t.attempt == 3
            errors = [e for e in store.history(t.id) if e.to_state == "RUN_ERROR"]
            assert [e.attempt for e in errors] == [1, 2] and "flaky failure 1" in (errors[0].message or "")
            assert states(store, "flaky-bad")[-3:] == ["RUNNING", "RUN_ERROR", "FAILED"]
            (tb,) = store.tasks(key="flaky-bad")
            assert tb.state == "FAILED" and "flaky failure 2" in (tb.error_tail or "")
            assert "Traceback" in (tb.error_tail or "") or "flaky" in (tb.error_tail or "")
            assert states(store, "flaky-handler").count("RUNNING") == 2
        finally:
            store.close()


@pytest.mark.slow
def test_timeouts_restart_then_fail(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=1, cores_per_node=2) as (cluster, client):
        # an app that leaves a grandchild behind: the whole process group goes on timeout
        script = f"echo $$ >> {tmp_path}/shell; sleep 30 & echo $! >> {tmp_path}/child; wait"
        t0 = time.time()
        app = client.submit_app(["sh", "-c", script], timeout=0.5, key="sleepy-app")
        with pytest.raises(TaskTimeout, match=r"exceeded timeout=0.5s on each of 4 attempt"):
            app.result()  # Balsam's default: restarted automatically, 3 times
        assert time.time() - t0 < 30
        pids = [int(x) for x in (tmp_path / "shell").read_text().split() + (tmp_path / "child").read_text().split()]
        assert len(pids) == 8 and not any(_alive(p) for p in pids)

        marker = tmp_path / "pid"
        # timeout=10: the isolated function's clock includes its process start (imports: seconds
        # on a loaded machine), and the function must have written its pid before the timeout
        f = client.submit(sleeper, 60, str(marker), timeout=10, on_timeout=lambda attempt: False, key="sleepy")
        with pytest.raises(TaskTimeout, match="on each of 1 attempt"):
            f.result()
        assert not _alive(int(marker.read_text()))  # the isolated function's process was killed
        h = client.submit_app("sleep 30", timeout=0.3, on_timeout=lambda attempt: attempt < 2, key="sleepy-h")
        with pytest.raises(TaskTimeout, match="on each of 2 attempt"):
            h.result()
        client.flush()
        store = Store(cluster.store_url)
        try:
            s = states(store, "sleepy-app")
            assert s.count("RUN_TIMEOUT") == 4 and s.count("RESTART_READY") == 3 and s[-1] == "FAILED"
            assert states(store, "sleepy")[-2:] == ["RUN_TIMEOUT", "FAILED"]
            assert states(store, "sleepy-h").count("RUN_TIMEOUT") == 2
        finally:
            store.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_app_failure_is_an_app_error(tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/x.db", tmp_path, nodes=1, cores_per_node=1) as (_, client):
        with pytest.raises(AppError, match="return code 7"):
            client.submit_app("sh -c 'exit 7'").result()


def test_worker_killed_mid_task(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        marker = tmp_path / "started"
        f = client.submit(slow_square, 7, str(marker), key="survivor")
        deadline = time.time() + 30
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        worker_pid = int(marker.read_text())
        os.kill(worker_pid, signal.SIGKILL)  # the worker process itself, mid-task
        assert f.result(timeout=120) == 49
        client.flush()
        store = Store(cluster.store_url)
        try:
            (t,) = store.tasks(key="survivor")
            hist = store.history(t.id)
            lost = [e for e in hist if e.to_state == "RESTART_READY"]
            assert lost and "attempt lost" in (lost[0].message or "")
            runs = [e for e in hist if e.to_state == "RUNNING"]
            assert len(runs) == 2 and runs[0].worker != runs[1].worker  # another worker process
            assert [e.to_state for e in hist][-2:] == ["RUN_DONE", "FINISHED"] and t.attempt == 2
        finally:
            store.close()


def slow_square(x: int, marker: str) -> int:
    p = Path(marker)
    if not p.exists():
        tmp = p.with_suffix(".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.rename(p)  # appears with its content: the test never reads a half-written pid
        time.sleep(60)  # the first attempt is killed with its worker
    return x * x
