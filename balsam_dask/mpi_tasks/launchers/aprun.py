"""Cray ALPS ``aprun`` (Cray XC systems under PBS or Cobalt, e.g. ALCF Theta).
(Design notes: docs/ARCHITECTURE.md, mpi_tasks/launchers/aprun.py.)
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
