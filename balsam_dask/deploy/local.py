"""``LocalEnsembleCluster``: the embedded default. One Dask worker process per emulated node.

The scheduler runs in this process with :class:`~balsam_dask.scheduler.plugin.BalsamPlugin`; the store
defaults to a SQLite file in the working directory. Each node-worker is a Nanny with
``cores_per_node`` threads and a :class:`~balsam_dask.protocol.NodeConfig` (its cores, GPU ids,
allocation id and end time), so tasks are packed with exact accounting as on a real machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import dask
from distributed import Nanny
from distributed.deploy.spec import ProcessInterface
from distributed.security import Security

from balsam_dask import validate as check
from balsam_dask.deploy.allocations import AllocationCluster
from balsam_dask.network import LOOPBACK, check_host, check_security
from balsam_dask.network import dashboard_address as dashboard_address_for
from balsam_dask.protocol import ENV_VAR, PRELOAD, NodeConfig
from balsam_dask.spec import NodeShape, check_bind, parse_duration
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


class LocalJob(ProcessInterface):
    """One local allocation: ``nodes`` node-worker processes (Nannies) on this machine, that
    leave ``drain_margin`` seconds before the allocation's walltime ends."""

    def __init__(self, scheduler: str | None = None, name: str | None = None, *, job: dict[str, Any],
                 on_event: Any = None, **_: Any) -> None:  # fmt: skip
        super().__init__()
        assert scheduler is not None and name is not None
        self.scheduler_address = scheduler
        self.name = name
        self.job = job
        self.on_event = on_event
        self.job_id = f"{job['alloc_prefix']}-{name}"
        self.nannies: list[NodeNanny] = []

    async def start(self) -> None:
        j = self.job
        walltime = j["walltime"]
        end = None if walltime is None else time.time() + walltime
        hosts = local_host_aliases()
        for i in range(j["nodes"]):
            cfg = NodeConfig(
                name=f"{self.name}-{i}", alloc_id=self.job_id, cores=j["cores"], gpus=j["gpus"], end_time=end,
                workdir_root=j["workdir_root"], results_dir=j["results_dir"], host=hosts[i % len(hosts)],
                launcher=j["launcher"], bind=j["bind"],
            )  # fmt: skip
            options = {
                "nthreads": j["cores"], "name": cfg.name, "env": {ENV_VAR: cfg.to_env()}, "preload": [PRELOAD],
                "memory_limit": j["memory"], "local_directory": j["scratch"], "silence_logs": j["silence_logs"],
                "host": j["host"], "security": j["security"], **j["worker_options"],
            }  # fmt: skip
            if end is not None:  # leave before the allocation ends, like a batch node-worker
                options["lifetime"] = max(1.0, end - j["drain_margin"] - time.time())
            self.nannies.append(NodeNanny(self.scheduler_address, **options))
        await asyncio.gather(*self.nannies)
        if self.on_event:
            self.on_event(self, "RUNNING", None)
        await super().start()

    async def close(self) -> None:
        await asyncio.gather(*(n.close() for n in self.nannies), return_exceptions=True)
        await super().close()

    async def close_nodes(self, names: list[str]) -> None:
        """Stop the named node processes (their nodes were given back); the others go on."""
        gone = [n for n in self.nannies if n.name in names]
        self.nannies = [n for n in self.nannies if n.name not in names]
        await asyncio.gather(*(n.close() for n in gone), return_exceptions=True)


class LocalEnsembleCluster(AllocationCluster):
    """``nodes`` emulated nodes now (one allocation named ``node``: workers ``node-0`` ...);
    ``request``/``adapt`` add more allocations of local node processes.

    The scheduler, the node-workers (Nannies and their worker processes) and Dask's HTTP
    server listen on loopback (127.0.0.1) unless ``host=`` says otherwise (``"0.0.0.0"``: every
    interface; or one interface's address). ``dashboard_address`` (``":8787"``: the dashboard
    on ``host``; ``"0.0.0.0:8787"``: on every interface) turns the dashboard on. ``security=``
    (a :class:`distributed.Security`, or ``True`` for temporary certificates) makes every
    connection TLS (``tls://`` addresses); ``Client(cluster)`` uses it.
    """

    job_cls = LocalJob
    system_name = "local"

    def __init__(
        self, nodes: int = 4, cores_per_node: int | None = None, gpus_per_node: int = 0,
        memory_per_node: int | None = None, store: str | None = None, *, walltime: Any = None,
        workdir: str | os.PathLike[str] | None = None, alloc_id: str | None = None,
        dashboard_address: str | None = None, validate: bool = False, silence_logs: int = logging.WARNING,
        asynchronous: bool = False, loop: Any = None, plugin_options: dict[str, Any] | None = None,
        worker_options: dict[str, Any] | None = None, launcher: str | None = None, bind: str | None = "none",
        max_nodes_per_job: int | None = None, drain_margin: float = 5.0, host: str | None = None,
        security: Security | bool | None = None,
    ) -> None:  # fmt: skip
        check.integer("nodes", nodes, "nodes=4", 0)
        if cores_per_node is None:
            cores_per_node = max(1, (os.cpu_count() or 1) // max(nodes, 1))
        shape = NodeShape(cores_per_node, gpus_per_node, memory_per_node)
        seconds = parse_duration("walltime", walltime)
        if launcher is not None:
            from balsam_dask.mpi_tasks.launchers import get_launcher

            get_launcher(launcher)
        listen = check_host("host", host) or LOOPBACK
        tls = check_security(security)
        dashboard = dashboard_address_for(dashboard_address, listen)
        http = dashboard or [(listen, 0)]  # without a dashboard, Dask's HTTP routes on a free port (no 8787 clash)
        base = Path(workdir or os.getcwd()).absolute()
        self.local_options = {
            "cores": shape.cores, "gpus": shape.gpus, "memory": memory_per_node or "auto",
            "workdir_root": str(base / "balsam_workdirs"), "results_dir": str(base / "balsam_results"),
            "scratch": str(base / "dask-scratch"), "silence_logs": silence_logs, "launcher": launcher,
            "bind": check_bind(bind),
            "worker_options": dict(worker_options or {}), "drain_margin": drain_margin,
            "alloc_prefix": alloc_id or f"local-{uuid.uuid4().hex[:8]}", "host": listen, "security": tls,
        }  # fmt: skip
        store_url = resolve_url(store or os.environ.get("BALSAM_DASK_STORE") or str(base / DEFAULT_SQLITE_FILE))
        self._first = True
        self._initial = (nodes, seconds) if nodes else None  # requested once the scheduler runs
        super().__init__(
            node_shape=shape, store_url=store_url, max_nodes_per_job=max_nodes_per_job or max(nodes, 1),
            default_walltime=seconds, plugin_options=plugin_options,
            scheduler_options={"host": listen, "dashboard": dashboard is not None, "dashboard_address": http,
                               "validate": validate},
            asynchronous=asynchronous, loop=loop, silence_logs=silence_logs, name="LocalEnsembleCluster", security=tls,
        )  # fmt: skip

    async def _start(self) -> None:
        await super()._start()
        if self._initial is not None:  # in __init__ when synchronous, at ``await cluster`` when not
            nodes, seconds = self._initial
            self._initial = None
            await self.request_async(nodes, seconds)

    async def _shrink(self, name: str, workers: list[str], hosts: list[str], keep_hosts: list[str]) -> str | None:
        job = self.workers.get(name)
        if isinstance(job, LocalJob):
            await job.close_nodes(workers)
        return None

    def new_job_name(self) -> str:
        if self._first:
            self._first = False
            return "node"  # the first allocation's workers are node-0, node-1, ...
        return super().new_job_name()

    def job_options(self, nodes: int, walltime: float | None) -> dict[str, Any]:
        return {**self.local_options, "nodes": nodes, "walltime": walltime}
