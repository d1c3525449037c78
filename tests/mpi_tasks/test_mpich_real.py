"""The MPICH launcher's argv run for real with the mpich wheel's Hydra mpiexec.

Hydra counts distinct names that resolve to this machine (``localhost`` and
``127.0.0.1``) as separate nodes, so a 2-node x 2-rank layout runs on one host.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from balsam_dask.mpi_tasks.detect import default_launcher, mpiexec_flavour
from balsam_dask.mpi_tasks.launchers import LaunchSpec, MpichLauncher
from balsam_dask.spec import Resources
from balsam_dask.worker.process import run_process

pytestmark = pytest.mark.mpi

SCRIPT = """
import json, os
from mpi4py import MPI

comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank + 1, op=MPI.SUM)
seen = comm.gather(
    {
        "rank": comm.rank,
        "host": os.environ.get("PMI_HOSTNAME"),
        "var": os.environ.get("BALSAM_TEST_VAR"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
    },
    root=0,
)
if comm.rank == 0:
    print(json.dumps({"size": comm.size, "sum": total, "ranks": seen}))
"""


def require_or_skip(what: str) -> None:
    """Skip without MPI, except where services are required (CI): there, fail."""
    if os.environ.get("BALSAM_DASK_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required here (BALSAM_DASK_REQUIRE_SERVICES=1) but not available")
    pytest.skip(f"{what} not available")


def _mpiexec() -> str:
    """The wheel's mpiexec beside this Python, else the one on PATH (skips without MPI)."""
    beside_python = Path(sys.executable).parent / "mpiexec"
    found = str(beside_python) if beside_python.exists() else shutil.which("mpiexec")
    if found is None:
        require_or_skip("mpiexec (pip install mpich)")
    if importlib.util.find_spec("mpi4py") is None:
        require_or_skip("mpi4py (pip install mpi4py)")
    assert found is not None
    return found


def test_allreduce_on_two_hydra_nodes(tmp_path: Path) -> None:
    mpiexec = _mpiexec()
    launcher = MpichLauncher()
    spec = LaunchSpec(
        argv=(sys.executable, "-c", SCRIPT),
        resources=Resources(nodes=2, ranks_per_node=2),
        env={"BALSAM_TEST_VAR": "hello world; $HOME"},
    )
    hosts = ["localhost", "127.0.0.1"]
    env = launcher.environ(spec, hosts)
    env["PATH"] = os.pathsep.join([str(Path(mpiexec).parent), os.environ.get("PATH", os.defpath)])

    res = run_process(launcher.command(spec, hosts), workdir=tmp_path / "job", env=env, timeout=120)

    assert res.returncode == 0, f"stdout:\n{res.stdout_tail}\nstderr:\n{res.stderr_tail}"
    out = json.loads(res.stdout_tail.splitlines()[-1])
    assert out["size"] == 4
    assert out["sum"] == 1 + 2 + 3 + 4
    assert sorted(r["rank"] for r in out["ranks"]) == [0, 1, 2, 3]
    assert {r["var"] for r in out["ranks"]} == {"hello world; $HOME"}
    assert {r["omp"] for r in out["ranks"]} == {"1"}
    hosts_seen = [r["host"] for r in out["ranks"]]
    if None not in hosts_seen:  # Hydra tells each rank its node name
        assert Counter(hosts_seen) == {"localhost": 2, "127.0.0.1": 2}


def test_timeout_stops_every_rank(tmp_path: Path) -> None:
    mpiexec = _mpiexec()
    launcher = MpichLauncher()
    script = (
        "import os, time\n"
        "from mpi4py import MPI\n"
        "open(f'rank{MPI.COMM_WORLD.rank}.pid', 'w').write(str(os.getpid()))\n"
        "time.sleep(100)\n"
    )
    spec = LaunchSpec(argv=(sys.executable, "-c", script), resources=Resources(nodes=2, ranks_per_node=1))
    hosts = ["localhost", "127.0.0.1"]
    env = launcher.environ(spec, hosts)
    env["PATH"] = os.pathsep.join([str(Path(mpiexec).parent), os.environ.get("PATH", os.defpath)])
    workdir = tmp_path / "job"
    rank_pids: list[int] = []
    try:
        res = run_process(launcher.command(spec, hosts), workdir=workdir, env=env, timeout=3, grace=2)
        assert res.timed_out
        for rank in range(2):
            pid_file = workdir / f"rank{rank}.pid"
            if pid_file.exists():
                rank_pids.append(int(pid_file.read_text()))
        assert rank_pids, f"no rank started within the timeout:\n{res.stderr_tail}"
        assert not still_running(rank_pids), "an MPI rank outlived the timeout"
    finally:
        kill_leftovers(rank_pids)


def still_running(pids: list[int], within: float = 5.0) -> list[int]:
    """Those of ``pids`` still running after up to ``within`` seconds of waiting for all to end."""
    deadline = time.monotonic() + within
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


def kill_leftovers(pids: list[int]) -> None:
    """A test's own clean-up: SIGKILL whatever of ``pids`` a failed assertion left running."""
    for pid in pids:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def test_mpiexec_flavour_of_the_wheel() -> None:
    assert mpiexec_flavour(_mpiexec()) == "mpich"


def test_default_launcher_finds_the_wheel_off_path(monkeypatch: pytest.MonkeyPatch) -> None:
    mpiexec = _mpiexec()
    if shutil.which("mpiexec", path=os.defpath) or shutil.which("mpirun", path=os.defpath):
        pytest.skip("a system MPI on the default PATH would be detected first")
    for var in ("SLURM_JOB_ID", "SLURM_JOBID", "LSB_JOBID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", os.defpath)
    launcher = default_launcher()
    assert isinstance(launcher, MpichLauncher)
    if Path(mpiexec).parent == Path(sys.executable).parent:
        assert launcher.executable == mpiexec


def test_default_launcher_is_detected_once_per_environment_for_a_while(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Detection (several PATH searches) is reused for the same request and environment;
    a launcher installed meanwhile is found once DETECT_TTL has passed, or at once when
    PATH or the batch job changes."""
    from balsam_dask.mpi_tasks import detect

    _mpiexec()
    if shutil.which("aprun", path=os.defpath):
        pytest.skip("this machine has aprun")
    for var in ("SLURM_JOB_ID", "SLURM_JOBID", "LSB_JOBID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.path.dirname(sys.executable)}:{os.defpath}")
    first = default_launcher()
    assert isinstance(first, MpichLauncher)
    aprun = tmp_path / "aprun"  # appears after the first detection (never run here)
    aprun.write_text("#!/bin/sh\nexit 1\n")
    aprun.chmod(0o755)
    assert default_launcher() is first  # reused: same request, same environment
    assert default_launcher("openmpi").name == "openmpi"  # another request is detected on its own
    monkeypatch.setattr(detect, "DETECT_TTL", 0.0)
    assert default_launcher().name == "aprun"  # expired: detected again, and aprun wins on Cray systems
    monkeypatch.setattr(detect, "DETECT_TTL", 30.0)
    aprun.unlink()
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}:{os.defpath}")  # another PATH: detected now
    assert isinstance(default_launcher(), MpichLauncher)
