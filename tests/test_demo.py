"""The main job (the README's first command runs it): ``python -m balsam_dask.demo`` on a
LocalEnsembleCluster with the embedded SQLite store, as a user runs it, its output read whole."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from balsam_dask.store import Store
from tests.conftest import require_or_skip


@pytest.mark.slow
def test_the_demo_runs_every_task_and_prints_no_warning(tmp_path: Path) -> None:
    """Every task FINISHED in the store, the summary printed, and nothing else on the terminal:
    no traceback, no warning (scikit-learn's forests run in threads of a process shared with
    other fits printed one per tree batch before they ran isolated)."""
    if shutil.which("xz") is None:
        require_or_skip("xz (apt-get install -y xz-utils)")
    work = tmp_path / "demo-run"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = subprocess.run([sys.executable, "-m", "balsam_dask.demo", "--workdir", str(work)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "Warning" not in text, text[-3000:]
    assert "23/23 done" in out.stdout and "FINISHED   23" in out.stdout and "== best models" in out.stdout
    with Store(f"sqlite:///{work}/balsam.db", read_only=True) as store:
        assert store.summary() == {"FINISHED": 23}
        forests = store.tasks(tags={"model": "forest"}, limit=None)
    assert len(forests) == 4 and all(t.cores == 2 for t in forests)
