"""``balsam-dask serve --local`` as users run it: a task file of serial and MPI app tasks with a
DAG and staging submitted with ``submit --file`` and served to the end; SIGTERM drains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from balsam_dask.store.api import Store

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RANKS = "from mpi4py import MPI; c = MPI.COMM_WORLD; open(f'rank-{c.rank}.txt', 'w').write(str(c.allreduce(1)))"


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "balsam_dask.cli", *args], capture_output=True, text=True,
                         timeout=120, env=ENV)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def _serve(url: str, workdir: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "balsam_dask.cli", "--store", url, "serve", "--local",
                                 "--nodes", "2", "--cores-per-node", "1", "--idle-ttl", "2", "--progress", "plain",
                                 "--workdir", str(workdir), *extra],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=ENV)  # fmt: skip


def _finish(p: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> str:
    try:
        assert p.wait(timeout) == 0, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return log.read_text()


@pytest.mark.mpi
@pytest.mark.slow
def test_a_task_file_with_serial_and_mpi_apps_runs_to_the_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    (tmp_path / "ranks.py").write_text(RANKS)
    (tmp_path / "mesh.txt").write_text("1 2 3\n")
    _cli("--store", url, "init")
    _cli("--store", url, "app", "add", "prep", "--argv-json", '["sh", "-c", "wc -w < mesh.txt > words.txt"]')
    _cli("--store", url, "app", "add", "ranks", "--argv-json", json.dumps([sys.executable, str(tmp_path / "ranks.py")]),
         "--launcher", "mpich")  # fmt: skip
    rows = [
        {"app": "prep", "name": "prep", "stage_in": [str(tmp_path / "mesh.txt")],
         "stage_out": [{"src": "words.txt", "dest": str(tmp_path / "results") + "/"}]},
        {"app": "ranks", "name": "ranks", "parents": ["prep"], "nodes": 2, "ranks_per_node": 1,
         "input_files": ["words.txt"]},
    ]  # fmt: skip
    (tmp_path / "results").mkdir()
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(rows))
    assert "added 2 tasks" in _cli("--store", url, "submit", "--file", str(tmp_path / "tasks.yaml"))
    log = tmp_path / "serve.log"
    out = _finish(_serve(url, tmp_path, log), log)
    assert "serve: 2 finished, 0 failed" in out
    with Store(url) as s:
        prep, ranks = (s.tasks(name=n)[0] for n in ("prep", "ranks"))
        assert prep.state == ranks.state == "FINISHED"
        wd = Path(ranks.workdir or "")
        assert sorted(p.name for p in wd.glob("rank-*.txt")) == ["rank-0.txt", "rank-1.txt"]
        assert (wd / "rank-0.txt").read_text() == "2"
        assert (wd / "words.txt").read_text().strip() == "3"  # the parent's output, brought in
        run = [e for e in s.history(ranks.id) if e.to_state == "RUNNING"][-1]
        assert run.hosts and len(run.hosts.split(",")) == 2
    assert (tmp_path / "results" / "words.txt").read_text().strip() == "3"  # staged out
    ls = _cli("--store", url, "ls")
    assert "prep" in ls and "ranks" in ls


@pytest.mark.slow
def test_sigterm_drains_what_is_in_flight_and_exits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    _cli("--store", url, "init")
    _cli("--store", url, "app", "add", "nap", "--argv-json", '["sleep", "{s}"]')
    with Store(url) as s:
        ids = s.add_tasks([{"app": "nap", "params": {"s": 2}, "name": f"nap{i}"} for i in range(6)])
    log = tmp_path / "serve.log"
    p = _serve(url, tmp_path, log, "--max-in-flight", "2")
    with Store(url) as s:
        deadline = time.time() + 120
        while s.count(state="RUNNING") < 2:
            assert time.time() < deadline and p.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    out = _finish(p, log, 60)
    assert "stopped by a signal, drained" in out
    with Store(url) as s:
        states = [s.task(i).state for i in ids]
    assert states.count("FINISHED") == 2 and states.count("READY") == 4, states
