"""``balsam-dask serve --site`` on the real local Slurm cluster (4 virtual nodes): a task file of
serial and MPI app tasks with a DAG and staging, allocations sized by the packing policy from
the store's backlog, a task added while it runs."""

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
from tests.deploy.test_slurm import RANKS, slurm_available

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]
ROOT = Path(__file__).resolve().parents[2]

SITE = {
    "scheduler": "slurm", "store": "site.db",
    "node": {"cores_per_node": 4, "launcher": "mpich"},
    "limits": {"max_nodes_per_job": 4, "max_total_nodes": 4, "max_queued_jobs": 2, "min_walltime": 120,
               "max_walltime": 600, "idle_timeout": 3, "default_task_walltime": 20, "job_walltime": "00:05:00"},
    "serve": {"idle_ttl": 4, "lease": 30},
}  # fmt: skip


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "balsam_dask.cli", *args], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.timeout(600)
def test_serve_a_task_file_on_slurm(tmp_path: Path) -> None:
    slurm_available()
    site = tmp_path / "site"
    _cli("site", "init", "--scheduler", "slurm", str(site))
    (site / "site.yaml").write_text(yaml.safe_dump(SITE))
    _cli("site", "check", str(site))
    url = f"sqlite:///{site}/site.db"
    data = tmp_path / "input.txt"
    data.write_text("staged data\n")
    _cli("--store", url, "init")
    _cli("--store", url, "app", "add", "produce", "--argv-json",
         '["sh", "-c", "cat input.txt > out.txt; echo {word} >> out.txt"]')  # fmt: skip
    _cli("--store", url, "app", "add", "consume", "--argv-json", '["sh", "-c", "wc -l < out.txt > lines.txt"]')
    script = tmp_path / "ranks.py"  # a file: the app's words are templates, the code's braces are not
    script.write_text(RANKS)
    _cli("--store", url, "app", "add", "ranks", "--argv-json", json.dumps([sys.executable, str(script)]))
    tasks = [
        {"app": "produce", "name": "produce", "params": {"word": "hello"}, "stage_in": [str(data)], "walltime": 20},
        {"app": "consume", "name": "consume", "parents": ["produce"], "input_files": ["out.txt"], "walltime": 20},
        {"app": "ranks", "name": "ranks", "parents": ["consume"], "nodes": 2, "ranks_per_node": 2, "walltime": 20},
        {"app": "produce", "name": "lonely", "params": {"word": "x"}, "stage_in": [f"file://{data}"], "walltime": 20},
    ]
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(tasks))
    assert "added 4 tasks" in _cli("--store", url, "submit", "--file", str(tmp_path / "tasks.yaml"))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "balsam_dask.cli", "serve", "--site", str(site), "--progress",
                              "plain"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        with Store(url) as s:
            deadline = time.time() + 300
            while s.count(state="FINISHED") < 1:
                assert time.time() < deadline and p.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
            (late,) = s.add_tasks([{"app": "produce", "name": "late", "params": {"word": "late"},
                                    "stage_in": [str(data)], "walltime": 20}])  # fmt: skip
        assert p.wait(300) == 0, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    with Store(url) as s:
        by_name = {t.name: t for t in s.tasks(limit=None)}
        assert {n: t.state for n, t in by_name.items()} == dict.fromkeys(
            ["produce", "consume", "ranks", "lonely", "late"], "FINISHED"), log.read_text()[-3000:]  # fmt: skip
        consume = Path(by_name["consume"].workdir or "")
        assert (consume / "lines.txt").read_text().strip() == "2"  # the staged line and the parameter's
        run = [e for e in s.history(by_name["ranks"].id) if e.to_state == "RUNNING"][-1]
        hosts = run.hosts.split(",") if run.hosts else []
        assert len(set(hosts)) == 2 and set(hosts) <= {"n1", "n2", "n3", "n4"}, hosts
        allocs = s.allocations()
        assert allocs and all(a.system == "slurm" for a in allocs)
        assert 2 in {a.nodes for a in allocs}, allocs  # the policy sized a 2-node job for the MPI task
        assert s.task(late).state == "FINISHED"
