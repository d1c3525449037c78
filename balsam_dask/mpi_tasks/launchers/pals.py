"""HPE Cray PALS ``mpiexec`` (PBS systems such as ALCF Polaris and Aurora).

Options (from ALCF's "Running Jobs on Polaris" user guide, which lists ``-n``,
``-ppn``, ``--cpu-bind``, ``--depth``, ``--env`` and ``--hostfile``, and from
``man mpiexec`` on those systems):

- ``-n N``: total ranks; ``--ppn R``: ranks per node;
- ``--depth T``: CPUs per rank, used by ``--cpu-bind depth``; ``--cpu-bind none``
  does not bind;
- ``--hosts a,b``: the nodes to use (the default is ``--hostfile $PBS_NODEFILE``);
- ``--env NAME=VALUE``: a variable for every rank (the launching environment is passed
  as well).

Several ``mpiexec`` may run side by side on one node (ALCF shows background launches
with ``--cpu-bind list:...`` to keep them on separate cores), so sub-node tasks pack;
with ``depth`` binding every launch starts at the first core, so packed tasks should
use ``cpu_bind=False``.
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
