"""IBM LSF ``jsrun`` (Job Step Manager; e.g. OLCF Summit).
(Design notes: docs/ARCHITECTURE.md, mpi_tasks/launchers/jsrun.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from balsam_dask.mpi_tasks.launchers.base import Launcher, LaunchSpec


class JsrunLauncher(Launcher):
    name: ClassVar[str] = "jsrun"
    program: ClassVar[str] = "jsrun"
    packs: ClassVar[bool] = True

    def command(self, spec: LaunchSpec, hosts: Sequence[str]) -> list[str]:
        self.check_hosts(spec, hosts)
        r = spec.resources
        argv = [
            self.executable,
            "--nrs",
            str(r.nodes),
            "--rs_per_host",
            "1",
            "--tasks_per_rs",
            str(r.ranks_per_node),
            "--cpu_per_rs",
            str(r.cores),
            "--gpu_per_rs",
            str(r.gpus),
            "--bind",
            f"packed:{r.threads_per_rank}" if spec.cpu_bind else "none",
        ]
        for key, value in spec.env:
            argv += ["-E", f"{key}={value}"]
        return [*argv, *spec.extra_args, *spec.argv]
