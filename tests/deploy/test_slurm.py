"""MPI tasks and ensemble jobs on the real local Slurm cluster (4 virtual nodes n1..n4)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_dask import Client, Store
from tests.conftest import require_or_skip

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]

# each rank writes its own file in the task's work directory (stdout lines of ranks may interleave)
RANKS = (
    "import os; from mpi4py import MPI; c = MPI.COMM_WORLD; s = c.allreduce(c.rank + 1); "
    "open(f'rank-{c.rank}.txt', 'w').write(f\"{c.rank} {os.environ.get('SLURMD_NODENAME')} {s}\")"
)


def slurm_available() -> None:
    if not os.environ.get("SLURM_CONF") or shutil.which("sinfo") is None:
        require_or_skip("Slurm (SLURM_CONF and sinfo)")
    out = subprocess.run(["sinfo", "-h", "-o", "%D %t"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not out.stdout.strip():
        require_or_skip(f"a responsive Slurm cluster (sinfo: {out.stdout.strip()} {out.stderr.strip()})")


@pytest.fixture(scope="module")
def slurm4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Client]]:
    slurm_available()
    from balsam_dask.deploy.clusters import SlurmEnsembleCluster

    d = tmp_path_factory.mktemp("slurm4")
    with SlurmEnsembleCluster(cores_per_node=4, walltime="00:10:00", log_directory=str(d), workdir=str(d),
                              poll_interval=1.0) as cluster, Client(cluster) as client:  # fmt: skip
        cluster.request(4)
        client.wait_for_workers(4, timeout=120)
        yield cluster, client


@pytest.mark.parametrize("launcher", ["srun", "mpich"])
@pytest.mark.parametrize("nodes", [2, 4])
def test_mpi_ranks_on_distinct_slurm_nodes(slurm4: tuple[object, Client], launcher: str, nodes: int) -> None:
    _, client = slurm4
    f = client.submit_mpi([sys.executable, "-c", RANKS], nodes=nodes, ranks_per_node=2, launcher=launcher)
    r = f.result(timeout=180)
    lines = [(r.workdir / f"rank-{i}.txt").read_text().split() for i in range(2 * nodes)]
    assert len(lines) == 2 * nodes
    total = sum(range(1, 2 * nodes + 1))
    assert {int(x[2]) for x in lines} == {total}  # every rank saw the same allreduce
    names = [x[1] for x in lines]
    assert len(set(names)) == nodes and set(names) <= {"n1", "n2", "n3", "n4"}
    assert all(names.count(n) == 2 for n in set(names))  # ranks_per_node respected
    assert r.command[0].endswith("srun" if launcher == "srun" else "mpiexec")


def mpi_fn(comm) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    return comm.size, ",".join(sorted(set(comm.allgather(os.environ.get("SLURMD_NODENAME", "?")))))


def test_mpi_function_on_slurm(slurm4: tuple[object, Client]) -> None:
    cluster, client = slurm4
    size, names = client.submit_mpi(mpi_fn, nodes=3, ranks_per_node=1).result(timeout=180)
    assert size == 3 and len(names.split(",")) == 3
    client.flush()
    store = Store(cluster.store_url)  # type: ignore[attr-defined]
    try:
        (alloc,) = store.allocations()
        assert alloc.system == "slurm" and alloc.nodes == 4 and alloc.scheduler_id and alloc.state == "RUNNING"
    finally:
        store.close()


#: A program of Open MPI's (its libmpi by ctypes, the path in argv[1]): its rank and world's size
#: on stdout and in rank-<rank>.txt with its Slurm node.
OPEN_MPI_PROGRAM = (
    "import ctypes, os, sys; m = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL); "
    "assert m.MPI_Init(None, None) == 0; "
    "world = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.in_dll(m, 'ompi_mpi_comm_world'))); "
    "n, r = ctypes.c_int(), ctypes.c_int(); m.MPI_Comm_size(world, ctypes.byref(n)); "
    "m.MPI_Comm_rank(world, ctypes.byref(r)); print('world', n.value); "
    "open(f'rank-{r.value}.txt', 'w').write(f\"{r.value} {os.environ.get('SLURMD_NODENAME')} {n.value}\"); "
    "m.MPI_Finalize()"
)


def debian_open_mpi() -> str:
    """Debian's Open MPI library (installed with NWChem by the test command), or skip."""
    lib = next((p for p in ("/usr/lib/x86_64-linux-gnu/libmpi.so.40", "/usr/lib/aarch64-linux-gnu/libmpi.so.40")
                if os.path.exists(p)), None)  # fmt: skip
    if lib is None or not os.path.exists("/usr/bin/mpirun"):
        require_or_skip("Debian's Open MPI (apt-get install -y openmpi-bin)")
    assert lib is not None
    return lib


def test_a_serial_open_mpi_program_runs_as_a_singleton_on_a_slurm_node(slurm4: tuple[object, Client]) -> None:
    """The node-worker runs in a job step; a task's program does not see the step's id, or Open
    MPI would take it for a rank srun started and abort in MPI_Init."""
    lib = debian_open_mpi()
    _, client = slurm4
    r = client.submit_app([sys.executable, "-c", OPEN_MPI_PROGRAM, lib], cores=1, name="ompi-serial").result(
        timeout=120
    )
    assert r.stdout_tail.strip() == "world 1"
    assert client.submit(os.environ.get, "SLURM_STEP_ID", "gone", pure=False).result(timeout=60) == "gone"


def test_open_mpi_ranks_fill_the_cores_the_placer_gave_not_the_jobs_one_slot_per_node(
    slurm4: tuple[object, Client],
) -> None:
    """Open MPI's mpirun in the ensemble job (Debian's Open MPI 4, NWChem's): the job has one task
    per node (the node-workers), yet an MPI task has 2 ranks on each of its 2 nodes."""
    lib = debian_open_mpi()
    _, client = slurm4
    root = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"} if os.getuid() == 0 else {}
    for _ in range(2):  # on two pairs of nodes, mpirun on either
        f = client.submit_mpi([sys.executable, "-c", OPEN_MPI_PROGRAM, lib], nodes=2, ranks_per_node=2,
                              launcher="openmpi:/usr/bin/mpirun", env=root, name="ompi-2x2")  # fmt: skip
        r = f.result(timeout=120)
        lines = sorted((r.workdir / f"rank-{i}.txt").read_text().split() for i in range(4))
        assert [(x[0], x[2]) for x in lines] == [("0", "4"), ("1", "4"), ("2", "4"), ("3", "4")]
        nodes = [x[1] for x in lines]
        assert len(set(nodes)) == 2 and all(nodes.count(n) == 2 for n in nodes), lines


def test_job_script_text(tmp_path: Path) -> None:
    from balsam_dask.deploy.jobs import EnsembleJobSpec
    from balsam_dask.deploy.systems.slurm import job_script

    spec = EnsembleJobSpec(name="ens-1", scheduler="tcp://10.0.0.1:8786", nodes=4, walltime="01:30:00",
                           cores_per_node=64, gpus_per_node=4, queue="debug", account="proj",
                           job_extra_directives=("--constraint=gpu",), job_script_prologue=("module load cuda",),
                           log_directory="/scratch/logs", python="/opt/py/bin/python")  # fmt: skip
    assert job_script(spec) == (
        "#!/usr/bin/env bash\n"
        "#SBATCH --job-name=ens-1\n"
        "#SBATCH --nodes=4\n"
        "#SBATCH --ntasks-per-node=1\n"
        "#SBATCH --exclusive\n"
        "#SBATCH --time=01:30:00\n"
        "#SBATCH --partition=debug\n"
        "#SBATCH --account=proj\n"
        "#SBATCH --gpus-per-node=4\n"
        "#SBATCH --output=/scratch/logs/ens-1-%j.out\n"
        "#SBATCH --constraint=gpu\n"
        "\n"
        "module load cuda\n"
        "END=$(( $(date +%s) + 5400 ))\n"
        "exec srun --overlap --nodes=4 --ntasks-per-node=1 --kill-on-bad-exit=0 /opt/py/bin/python -m "
        'balsam_dask.node_worker tcp://10.0.0.1:8786 --name-prefix ens-1 --cores 64 --gpus 4 --end "$END" '
        "--drain-margin 60 --alloc-env SLURM_JOB_ID --workdir balsam_workdirs --results-dir balsam_results "
        "--index-env SLURM_NODEID --host-env SLURMD_NODENAME --launcher srun\n"
    )
