"""Slurm's ``srun``, run as a job step inside the allocation that holds the nodes.
(Design notes: docs/ARCHITECTURE.md, mpi_tasks/launchers/srun.py.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from balsam_dask.errors import LauncherError
from balsam_dask.mpi_tasks.launchers.base import Launcher, LaunchSpec

_MPI_TYPES = ("pmi2", "pmix", "cray_shasta", "none")
#: Job-level variables a task step must keep; every other ``SLURM_*`` variable of the
#: node-worker's own step (``SLURM_NTASKS``, ``SLURM_STEP_*``, ``SLURM_CPU_BIND``...)
#: would be read by srun as defaults for the task's step.
_KEEP_PREFIXES = ("SLURM_JOB_", "SLURM_SUBMIT_", "SLURM_CLUSTER_NAME", "SLURM_CONF", "SLURM_JOBID")


class SrunLauncher(Launcher):
    name: ClassVar[str] = "srun"
    program: ClassVar[str] = "srun"
    packs: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ("executable", "mpi", "overlap")

    def __init__(self, *, mpi: str = "pmi2", overlap: bool = False, executable: str | None = None) -> None:
        super().__init__(executable=executable)
        if mpi not in _MPI_TYPES:
            raise LauncherError(
                f"mpi={mpi!r} is invalid for srun: use one of {', '.join(_MPI_TYPES)} "
                "(see `srun --mpi=list`), e.g. mpi='pmi2'"
            )
        if not isinstance(overlap, bool):
            raise LauncherError(f"overlap={overlap!r} is invalid: use True or False")
        self.mpi = mpi
        self.overlap = overlap

    def command(self, spec: LaunchSpec, hosts: Sequence[str]) -> list[str]:
        host_list = self.check_hosts(spec, hosts)
        r = spec.resources
        argv = [
            self.executable,
            f"--nodes={r.nodes}",
            f"--ntasks={r.total_ranks}",
            f"--ntasks-per-node={r.ranks_per_node}",
            f"--cpus-per-task={r.threads_per_rank}",
            f"--nodelist={','.join(host_list)}",
            "--overlap" if self.overlap else "--exact",
            f"--cpu-bind={'cores' if spec.cpu_bind else 'none'}",
        ]
        if r.gpus_per_rank:
            argv.append(f"--gpus-per-task={r.gpus_per_rank}")
        argv += [f"--mpi={self.mpi}", "--export=ALL"]
        return [*argv, *spec.extra_args, *spec.argv]

    def environ(self, spec: LaunchSpec, hosts: Sequence[str]) -> dict[str, str]:
        env = super().environ(spec, hosts)
        env.update(spec.env)
        return env

    def clear_env(self, environ: Mapping[str, str]) -> list[str]:
        return [
            k for k in environ
            if (k.startswith("SLURM_") and not k.startswith(_KEEP_PREFIXES)) or k.startswith(("PMI_", "PMIX_"))
        ]  # fmt: skip
