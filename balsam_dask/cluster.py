"""``LocalEnsembleCluster``: the embedded default. One Dask worker process per emulated node.

The scheduler runs in this process with :class:`~balsam_dask.plugin.BalsamPlugin`; the store
defaults to a SQLite file in the working directory. Each node-worker is a Nanny with
``cores_per_node`` threads and a :class:`~balsam_dask.node.NodeConfig` (its cores, GPU ids,
allocation id and end time), so tasks are packed with exact accounting as on a real machine.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import dask
from distributed import Nanny, Scheduler, SpecCluster

from balsam_dask.errors import InvalidSpec
from balsam_dask.node import ENV_VAR, PRELOAD, NodeConfig
from balsam_dask.plugin import BalsamPlugin
from balsam_dask.spec import NodeShape, parse_duration
from balsam_dask.store.engine import DEFAULT_SQLITE_FILE, resolve_url


def local_host_aliases() -> list[str]:
    """Distinct names of this machine, one per emulated node: MPICH's Hydra counts each
    as a separate node (a repeated name would merge ranks into one node)."""
    names = ["localhost", "127.0.0.1", socket.gethostname()]
    try:
        names.append(socket.gethostbyname(socket.gethostname()))
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
        names.extend(a for a in out if ":" not in a)
    except (OSError, subprocess.SubprocessError):
        pass
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    return seen


class NodeNanny(Nanny):
    """A Nanny whose worker process is not a daemon, so tasks may start processes of their
    own (``multiprocessing``, joblib, scikit-learn's ``n_jobs``) as on a real node."""

    async def instantiate(self) -> Any:
        with dask.config.set({"distributed.worker.daemon": False}):
            return await super().instantiate()


class LocalEnsembleCluster(SpecCluster):
    def __init__(
        self, nodes: int = 4, cores_per_node: int | None = None, gpus_per_node: int = 0,
        memory_per_node: int | None = None, store: str | None = None, *, walltime: Any = None,
        workdir: str | os.PathLike[str] | None = None, alloc_id: str | None = None,
        dashboard_address: str | None = None, validate: bool = False, silence_logs: int = logging.WARNING,
        asynchronous: bool = False, loop: Any = None, plugin_options: dict[str, Any] | None = None,
        worker_options: dict[str, Any] | None = None, launcher: str | None = None,
    ) -> None:  # fmt: skip
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise InvalidSpec(f"nodes={nodes!r} is invalid: use an integer >= 1, e.g. nodes=4")
        if cores_per_node is None:
            cores_per_node = max(1, (os.cpu_count() or 1) // nodes)
        shape = NodeShape(cores_per_node, gpus_per_node, memory_per_node)
        seconds = parse_duration("walltime", walltime)
        base = Path(workdir or os.getcwd()).absolute()
        self.store_url = resolve_url(store or os.environ.get("BALSAM_DASK_STORE") or str(base / DEFAULT_SQLITE_FILE))
        self.node_shape = shape
        self.alloc_id = alloc_id or f"local-{uuid.uuid4().hex[:8]}"
        self.end_time = None if seconds is None else time.time() + seconds
        plugin = BalsamPlugin(
            self.store_url.render_as_string(hide_password=False),
            node_shapes=[{"cores": shape.cores, "gpus": shape.gpus}], max_nodes_per_allocation=nodes,
            **(plugin_options or {}),
        )  # fmt: skip
        self.plugin = plugin
        scheduler = {
            "cls": Scheduler,
            "options": {
                "plugins": [plugin],
                "dashboard": dashboard_address is not None,
                "dashboard_address": dashboard_address,
                "validate": validate,
            },
        }
        memory = memory_per_node if memory_per_node is not None else "auto"
        if launcher is not None:
            from balsam_dask.mpi_tasks.launchers import get_launcher

            get_launcher(launcher)
        hosts = local_host_aliases()
        workers = {}
        for i in range(nodes):
            name = f"node-{i}"
            cfg = NodeConfig(
                name=name, alloc_id=self.alloc_id, cores=shape.cores, gpus=shape.gpus, end_time=self.end_time,
                workdir_root=str(base / "balsam_workdirs"), results_dir=str(base / "balsam_results"),
                host=hosts[i % len(hosts)], launcher=launcher,
            )  # fmt: skip
            options = {
                "nthreads": shape.cores, "name": name, "env": {ENV_VAR: cfg.to_env()}, "preload": [PRELOAD],
                "memory_limit": memory, "local_directory": str(base / "dask-scratch"), "silence_logs": silence_logs,
                **(worker_options or {}),
            }  # fmt: skip
            workers[name] = {"cls": NodeNanny, "options": options}
        super().__init__(
            workers=workers, scheduler=scheduler, asynchronous=asynchronous, loop=loop,
            silence_logs=silence_logs, name="LocalEnsembleCluster",
        )  # fmt: skip
