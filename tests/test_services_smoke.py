"""Smoke tests for the real services the integration tests rely on (DESIGN.md §7).

They check the local Slurm cluster (``scripts/slurm_local.sh``) and the PostgreSQL server
(``scripts/pg_local.sh``) are usable, and skip with a reason when a service is not configured.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TERMINAL_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}

ALLREDUCE = """
import os
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank + 1)
print(comm.rank, comm.size, total, os.environ.get("SLURMD_NODENAME", "?"), flush=True)
"""


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


@functools.cache
def _slurm_skip_reason() -> str | None:
    # Cached: with the controller down, each sinfo takes seconds to give up.
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (start the cluster with scripts/slurm_local.sh)"
    if shutil.which("sinfo") is None:
        return "Slurm client commands are not installed"
    try:
        result = _run(["sinfo", "-h", "-o", "%D"], timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if result.returncode != 0:
        return f"sinfo failed: {result.stderr.strip()}"
    return None


@pytest.fixture
def slurm_job_name() -> Iterator[str]:
    """A unique job name; every job submitted under it is cancelled at teardown."""
    reason = _slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    yield name
    _run(["scancel", f"--name={name}"], timeout=15)


def _wait_for_job(job_id: str, timeout: float = 60) -> str:
    """Poll squeue until the job is in a terminal state; return that state.

    squeue hides finished jobs unless asked for all states; the record stays for MinJobAge.
    """
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        result = _run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], timeout=15)
        state = result.stdout.strip()
        if state in TERMINAL_STATES:
            return state
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish within {timeout:.0f}s (last state {state!r})")


@pytest.mark.slurm
def test_sbatch_two_nodes(slurm_job_name: str, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    submit = _run(
        [
            "sbatch",
            "--parsable",
            "-N",
            "2",
            "--time=2",
            f"--job-name={slurm_job_name}",
            f"--output={out}",
            "--wrap",
            "srun -N2 -n2 printenv SLURMD_NODENAME",
        ]
    )
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]

    assert _wait_for_job(job_id) == "COMPLETED", out.read_text() if out.exists() else ""
    names = out.read_text().split()
    assert len(names) == 2, names
    assert len(set(names)) == 2, f"expected two distinct nodes, got {names}"


@pytest.mark.slurm
@pytest.mark.mpi
def test_srun_pmi2_allreduce_two_nodes(slurm_job_name: str, tmp_path: Path) -> None:
    pytest.importorskip("mpi4py")
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    args = [
        "srun",
        "--mpi=pmi2",
        "-N",
        "2",
        "--ntasks-per-node=2",
        "--time=2",
        f"--job-name={slurm_job_name}",
        sys.executable,
        str(script),
    ]
    try:
        result = _run(args, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("srun --mpi=pmi2 did not finish within 90s")
    assert result.returncode == 0, result.stderr

    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert sorted(int(row[0]) for row in rows) == [0, 1, 2, 3], result.stdout
    assert {(row[1], row[2]) for row in rows} == {("4", "10")}, result.stdout
    assert len({row[3] for row in rows}) == 2, f"ranks should span two nodes: {result.stdout}"


@pytest.mark.postgres
def test_postgres_select_one() -> None:
    url = os.environ.get("BALSAM_DASK_TEST_PG")
    if not url:
        pytest.skip("BALSAM_DASK_TEST_PG is not set (get a URL from scripts/pg_local.sh ensure)")
    psycopg = pytest.importorskip("psycopg")
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
