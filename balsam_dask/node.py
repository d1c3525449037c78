"""What a node-worker tells the scheduler about itself. Pure.

Every Dask worker that balsam_dask places tasks on is a *node-worker*: it owns one node (or
one emulated node) of one allocation. Its launcher (LocalEnsembleCluster, a batch job script)
sets ``$BALSAM_DASK_NODE`` to :meth:`NodeConfig.to_env` and preloads
``balsam_dask.worker_setup``, which hands the config to the scheduler at registration
(``Worker.startup_information``), so the plugin knows cores, GPUs and walltime before the
worker takes any task.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from balsam_dask.errors import InvalidSpec
from balsam_dask.spec import check_bind

ENV_VAR = "BALSAM_DASK_NODE"
#: Key under which workers report their NodeConfig (``WorkerState.extra[EXTRA_KEY]``).
EXTRA_KEY = "balsam"
PRELOAD = "balsam_dask.worker_setup"
#: Dask worker resource counting a node-worker's cores. Every balsam task dispatched to the
#: node asks for its cores, so the worker starts a task the scheduler queued there
#: (prefetch) only when that many cores are free, exactly as the placer accounts them.
CORES_RESOURCE = "BALSAM_CORES"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    alloc_id: str
    cores: int
    gpus: int = 0
    gpu_ids: tuple[str, ...] = ()
    end_time: float | None = None  # allocation end, epoch seconds
    host: str | None = None  # the host name MPI launchers use for this node
    workdir_root: str = "balsam_workdirs"
    results_dir: str = "balsam_results"
    launcher: str | None = None  # the MPI launcher for this allocation (None: detect)
    bind: str | None = None  # MPI rank binding on this allocation's nodes (spec.BIND_CHOICES)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidSpec(f"node name {self.name!r} is invalid: give a non-empty string such as 'node-0'")
        if not isinstance(self.alloc_id, str) or not self.alloc_id:
            raise InvalidSpec(f"alloc_id {self.alloc_id!r} is invalid: give a string such as 'local-1'")
        if isinstance(self.cores, bool) or not isinstance(self.cores, int) or self.cores < 1:
            raise InvalidSpec(f"cores={self.cores!r} is invalid: a node has at least 1 core, e.g. cores=4")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise InvalidSpec(f"gpus={self.gpus!r} is invalid: use an integer >= 0, e.g. gpus=4")
        ids = tuple(str(i) for i in self.gpu_ids) or tuple(str(i) for i in range(self.gpus))
        if len(ids) != self.gpus or len(set(ids)) != len(ids):
            raise InvalidSpec(f"gpu_ids={self.gpu_ids!r} do not match gpus={self.gpus}: give {self.gpus} distinct ids")
        object.__setattr__(self, "gpu_ids", ids)
        check_bind(self.bind)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpu_ids"] = list(self.gpu_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "gpu_ids" in known:
            known["gpu_ids"] = tuple(known["gpu_ids"])
        return cls(**known)

    def to_env(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_env(cls, text: str) -> NodeConfig:
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidSpec(f"${ENV_VAR}={text!r} is not JSON; it is written by NodeConfig.to_env()") from None
        if not isinstance(data, dict):
            raise InvalidSpec(f"${ENV_VAR}={text!r} is not a JSON object")
        return cls.from_dict(data)
