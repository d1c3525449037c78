"""``balsam-dask serve`` under faults, as separate processes: SIGKILL mid-run then a restart
(every task FINISHED once, none run again after finishing), and two services on one
PostgreSQL store (no task runs twice)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from balsam_dask.store.api import Store

#: Appends a line to side/<i> each time it runs: the runs a task had, whatever the store says.
SIDE = ["sh", "-c", 'echo run >> "$1/$2"', "sh", "{side}", "{i}"]
ROOT = Path(__file__).resolve().parents[2]


def _populate(url: str, side: Path, n: int) -> list[int]:
    side.mkdir()
    with Store(url) as s:
        s.add_app("side", SIDE)
        return s.add_tasks([{"app": "side", "params": {"side": str(side), "i": i}, "name": f"t{i}"} for i in range(n)])


def _serve(url: str, workdir: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "balsam_dask.cli", "--store", url, "serve", "--local", "--nodes", "2",
           "--cores-per-node", "1", "--lease", "3", "--idle-ttl", "4", "--progress", "plain",
           "--workdir", str(workdir), *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _wait(p: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    try:
        assert p.wait(timeout) == 0, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _runs(side: Path, n: int) -> list[int]:
    return [len((side / str(i)).read_text().splitlines()) if (side / str(i)).exists() else 0 for i in range(n)]


@pytest.mark.slow
def test_sigkill_of_serve_then_restart_runs_each_task_to_one_finish(tmp_path: Path) -> None:
    url, side, n = f"sqlite:///{tmp_path}/s.db", tmp_path / "side", 1000
    ids = _populate(url, side, n)
    log = tmp_path / "serve.log"
    p = _serve(url, tmp_path, log)
    try:
        with Store(url, read_only=True) as s:
            deadline = time.time() + 120
            while s.count(state="FINISHED") < n // 4:
                assert time.time() < deadline and p.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # serve, its scheduler, store writer and node-workers
        p.wait()
    time.sleep(0.5)  # task processes of their own session end (each runs for milliseconds)
    with Store(url) as s:
        done_before = {t.id for t in s.tasks(state="FINISHED", limit=None)}
    assert n // 4 <= len(done_before) < n
    p = _serve(url, tmp_path, log)  # waits for the dead service's leases to expire, requeues, finishes
    _wait(p, 240, log)
    with Store(url) as s:
        tasks = {t.id: t for t in s.tasks(limit=None)}
        assert Counter(t.state for t in tasks.values()) == {"FINISHED": n}
        requeued = 0
        for tid in ids:
            states = [e.to_state for e in s.history(tid)]
            assert states.count("FINISHED") == 1 and states[-1] == "FINISHED", (tid, states)
            requeued += "RESTART_READY" in states
    runs = _runs(side, n)
    index = {tid: i for i, tid in enumerate(ids)}
    assert all(runs[index[tid]] == 1 for tid in done_before), "a task that had finished ran again"
    assert all(r >= 1 for r in runs)
    print(
        f"finished before the kill {len(done_before)}, requeued from a dead lease {requeued}, "
        f"ran twice (never recorded finished) {sum(r > 1 for r in runs)}"
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_two_services_on_one_postgres_store_never_run_a_task_twice(tmp_path: Path) -> None:
    from tests.conftest import drop_pg_schema, new_pg_schema_url

    url, schema = new_pg_schema_url()
    try:
        side, n = tmp_path / "side", 2000
        _populate(url, side, n)
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        for i in range(2):
            (tmp_path / f"w{i}").mkdir()
        procs = [_serve(url, tmp_path / f"w{i}", logs[i]) for i in range(2)]
        for p, log in zip(procs, logs, strict=True):
            _wait(p, 300, log)
        with Store(url) as s:
            tasks = s.tasks(limit=None)
            assert Counter(t.state for t in tasks) == {"FINISHED": n}
            owners = Counter(t.lease_owner for t in tasks)
            running = Counter(e.task_id for e in s.events() if e.to_state == "RUNNING")
        assert set(running.values()) == {1}
        assert _runs(side, n) == [1] * n
        assert len(owners) == 2, f"both services took tasks: {owners}"
    finally:
        drop_pg_schema(schema)
