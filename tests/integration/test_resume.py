"""Durable tasks: the scheduler and client die with SIGKILL; a new cluster resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from balsam_dask import Store
from tests.clusters import ensemble
from tests.integration import resume_job


@pytest.mark.slow
def test_resume_after_sigkill(store_url: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.resume_job", store_url, str(tmp_path)], cwd=root,
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    store = Store(store_url)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until the run is well under way
            if store.count(tags={"job": "resume"}, state="FINISHED") >= 8:
                break
            assert proc.poll() is None, "the workload exited on its own"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # scheduler, client and their workers
        proc.wait(30)
        before = {t.key: t.state for t in store.tasks(tags={"job": "resume"}, limit=None)}
        finished_before = {k for k, s in before.items() if s == "FINISHED"}
        assert 8 <= len(finished_before) < len(before)
        runs_before = Counter((tmp_path / "runs.log").read_text().split())

        with ensemble(store_url, tmp_path, nodes=2, cores_per_node=2) as (_, client):
            futures = client.resume()
            assert set(futures) == set(before) - finished_before
            combos = [futures.get(f"combine-{j}") for j in range(resume_job.N_LEAVES // resume_job.GROUP)]
            values = client.gather([f for f in combos if f is not None])
            client.flush()
        after = {t.key: t for t in store.tasks(tags={"job": "resume"}, limit=None)}
        assert {t.state for t in after.values()} == {"FINISHED"}
        for t in after.values():  # each task FINISHED exactly once
            assert [e.to_state for e in store.history(t.id)].count("FINISHED") == 1, t.key
        runs = Counter((tmp_path / "runs.log").read_text().split())
        for key in finished_before:  # no finished task ran again
            assert runs[key] == runs_before[key] == 1, key
        assert set(runs) == set(before)
        combos_done_before = sum(1 for k in finished_before if k.startswith("combine"))
        if combos_done_before == 0:
            assert sum(values) == resume_job.expected_total()
        resumed = [t for t in after.values() if t.key not in finished_before]
        assert all(any(e.message and "resumed" in e.message for e in store.history(t.id))
                   or before[t.key] in ("CREATED", "AWAITING_PARENTS", "READY") for t in resumed)  # fmt: skip
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        store.close()
