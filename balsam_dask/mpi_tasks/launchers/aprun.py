"""Cray ALPS ``aprun`` (Cray XC systems under PBS or Cobalt, e.g. ALCF Theta).

Options (from the aprun(1) man page in Cray's "Running Applications" guide, S-2496,
and HPE's "Run Applications Using the aprun Command"):

- ``-n PES``: total processing elements (ranks); ``-N PES_PER_NODE``;
- ``-d DEPTH``: CPUs reserved for each PE and its threads;
- ``-cc depth`` binds each PE to its ``-d`` CPUs; ``-cc none`` does not bind;
- ``-L NODE_LIST``: candidate node ids (numeric nids, comma separated);
- ``-e NAME=VALUE``: set a variable on the compute nodes (aprun also forwards the
  launching environment, so ``OMP_NUM_THREADS`` from :meth:`environ` reaches the PEs).

ALPS gives a node to one application at a time (exclusive access is the default
``-F`` mode), so sub-node tasks do not pack. Host names such as ``nid00012`` are
turned into the numeric id ``12`` that ``-L`` expects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from balsam_dask.errors import LauncherError
from balsam_dask.mpi_tasks.launchers.base import Launcher, LaunchSpec

_NID = re.compile(r"^(?:nid)?0*(\d+)$")


def node_id(host: str) -> str:
    """The ALPS node id of a Cray host name: ``'nid00012'`` or ``'12'`` -> ``'12'``."""
    m = _NID.match(host)
    if m is None:
        raise LauncherError(
            f"aprun: host {host!r} is not a Cray node id; aprun -L takes node ids such as 'nid00012' or '12'"
        )
    return m.group(1)


class AprunLauncher(Launcher):
    name: ClassVar[str] = "aprun"
    program: ClassVar[str] = "aprun"
    packs: ClassVar[bool] = False

    def command(self, spec: LaunchSpec, hosts: Sequence[str]) -> list[str]:
        nids = [node_id(h) for h in self.check_hosts(spec, hosts)]
        if len(set(nids)) != len(nids):
            raise LauncherError(f"aprun: hosts {list(hosts)!r} name a node twice; give distinct nodes")
        r = spec.resources
        argv = [
            self.executable,
            "-n",
            str(r.total_ranks),
            "-N",
            str(r.ranks_per_node),
            "-d",
            str(r.threads_per_rank),
            "-cc",
            "depth" if spec.cpu_bind else "none",
            "-L",
            ",".join(nids),
        ]
        for key, value in spec.env:
            argv += ["-e", f"{key}={value}"]
        return [*argv, *spec.extra_args, *spec.argv]
