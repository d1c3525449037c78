"""MPICH's Hydra ``mpiexec``.

Options (from ``mpiexec -h`` of Hydra 4.x/5.x and the MPICH wiki page
"Using the Hydra Process Manager"):

- ``-n N``: total number of processes; ``-ppn R``: processes per node;
- ``-hosts a,b``: comma-separated host list (distinct names that resolve to the same
  machine count as separate nodes; a repeated name is merged into one node);
- ``-genv NAME VALUE``: a variable for every process (other variables are passed
  as well: ``-genvall`` is the default);
- ``-bind-to core:T``: bind each process to T cores; ``-bind-to none`` (the default)
  does not bind.

Several ``mpiexec`` may run on one node at once, so sub-node tasks pack. Binding
starts at core 0 in each launch, so packed tasks should use ``cpu_bind=False``
unless the cores are otherwise kept apart.
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
