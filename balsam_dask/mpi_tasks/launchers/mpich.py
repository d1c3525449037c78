"""MPICH's Hydra ``mpiexec``.
(Design notes: docs/ARCHITECTURE.md, mpi_tasks/launchers/mpich.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from balsam_dask.mpi_tasks.launchers.base import Launcher, LaunchSpec


class MpichLauncher(Launcher):
    name: ClassVar[str] = "mpich"
    program: ClassVar[str] = "mpiexec"
    packs: ClassVar[bool] = True

    def command(self, spec: LaunchSpec, hosts: Sequence[str]) -> list[str]:
        host_list = self.check_hosts(spec, hosts)
        r = spec.resources
        argv = [
            self.executable,
            "-n",
            str(r.total_ranks),
            "-ppn",
            str(r.ranks_per_node),
            "-hosts",
            ",".join(host_list),
            "-bind-to",
            f"core:{r.threads_per_rank}" if spec.cpu_bind else "none",
        ]
        for key, value in spec.env:
            argv += ["-genv", key, value]
        return [*argv, *spec.extra_args, *spec.argv]
