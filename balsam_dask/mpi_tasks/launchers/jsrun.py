"""IBM LSF ``jsrun`` (Job Step Manager; e.g. OLCF Summit).

Options (from IBM's "jsrun command" page for LSF 10.1 and OLCF's jsrun quick-start
guide): a launch is a number of identical *resource sets*, none spanning a node.

- ``--nrs N``: number of resource sets; ``--rs_per_host 1``: at most one per host;
- ``--tasks_per_rs R``, ``--cpu_per_rs C`` (physical cores), ``--gpu_per_rs G``;
- ``--bind packed:T`` binds each task to T cores of its set; ``--bind none``;
- ``-E NAME=VALUE``: set a variable for the tasks (the launching environment is
  propagated as well, so ``OMP_NUM_THREADS`` from :meth:`environ` reaches them).

A task on ``nodes`` nodes becomes one resource set per node (``--nrs nodes
--rs_per_host 1``) holding all its ranks, cores and GPUs there, so the layout is
exact. jsrun cannot name hosts on its command line (only through an explicit resource
file, ``--erf_input``), so JSM picks which nodes of the allocation run the step: the
host list is checked for length only. JSM gives concurrent job steps disjoint
resource sets, so sub-node tasks pack.
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
