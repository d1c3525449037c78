"""Open MPI's ``mpirun``.
(Design notes: docs/ARCHITECTURE.md, mpi_tasks/launchers/openmpi.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from balsam_dask.errors import LauncherError
from balsam_dask.mpi_tasks.launchers.base import Launcher, LaunchSpec

#: Batch systems whose allocation ``mpirun`` would read (Open MPI's ``ras`` components). In an
#: ensemble job it finds one slot per node (one node-worker each) and refuses a second rank;
#: the hosts and slots an MPI task has are the placer's, given with ``--host``.
BATCH_ALLOCATIONS = "^slurm,tm,pbs,lsf,gridengine,alps"
#: The variable naming them: Open MPI 4's, and PRRTE's (Open MPI 5).
RAS_VARS = ("OMPI_MCA_ras", "PRTE_MCA_ras")


class OpenMPILauncher(Launcher):
    name: ClassVar[str] = "openmpi"
    program: ClassVar[str] = "mpirun"
    packs: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ("executable", "as_root")

    def __init__(self, *, as_root: bool = False, executable: str | None = None) -> None:
        super().__init__(executable=executable)
        if not isinstance(as_root, bool):
            raise LauncherError(f"as_root={as_root!r} is invalid: use True or False")
        self.as_root = as_root

    def command(self, spec: LaunchSpec, hosts: Sequence[str]) -> list[str]:
        host_list = self.check_hosts(spec, hosts)
        r = spec.resources
        rpn = r.ranks_per_node
        mapping = f"ppr:{rpn}:node:PE={r.threads_per_rank}" if spec.cpu_bind else f"ppr:{rpn}:node"
        argv = [
            self.executable,
            "-np",
            str(r.total_ranks),
            "--map-by",
            mapping,
            "--bind-to",
            "core" if spec.cpu_bind else "none",
            "--host",
            ",".join(f"{h}:{rpn}" for h in host_list),
        ]
        # Variables set on mpirun itself (see environ) reach remote ranks only if named.
        for key in ("OMP_NUM_THREADS", *(["CUDA_VISIBLE_DEVICES"] if spec.gpu_ids else [])):
            if key not in spec.env_dict:
                argv += ["-x", key]
        for key, value in spec.env:
            argv += ["-x", f"{key}={value}"]
        return [*argv, *spec.extra_args, *spec.argv]

    def environ(self, spec: LaunchSpec, hosts: Sequence[str]) -> dict[str, str]:
        env = super().environ(spec, hosts)
        given = spec.env_dict
        for name in RAS_VARS:  # the task's own choice, if it made one
            env[name] = given.get(name, BATCH_ALLOCATIONS)
        if self.as_root:
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        return env
