"""HPE Cray PALS ``mpiexec`` (PBS systems such as ALCF Polaris and Aurora).
(Design notes: docs/ARCHITECTURE.md, mpi_tasks/launchers/pals.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from balsam_dask.mpi_tasks.launchers.base import Launcher, LaunchSpec


class PalsLauncher(Launcher):
    name: ClassVar[str] = "pals"
    program: ClassVar[str] = "mpiexec"
    packs: ClassVar[bool] = True

    def command(self, spec: LaunchSpec, hosts: Sequence[str]) -> list[str]:
        host_list = self.check_hosts(spec, hosts)
        r = spec.resources
        argv = [
            self.executable,
            "-n",
            str(r.total_ranks),
            "--ppn",
            str(r.ranks_per_node),
            "--depth",
            str(r.threads_per_rank),
            "--cpu-bind",
            "depth" if spec.cpu_bind else "none",
            "--hosts",
            ",".join(host_list),
        ]
        for key, value in spec.env:
            argv += ["--env", f"{key}={value}"]
        return [*argv, *spec.extra_args, *spec.argv]
