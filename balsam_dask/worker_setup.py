"""Dask worker preload that makes a worker a balsam_dask node-worker.

``dask worker --preload balsam_dask.worker_setup`` (or ``preload=[...]`` on a Nanny) with
``$BALSAM_DASK_NODE`` set to a :class:`~balsam_dask.node.NodeConfig`. The config reaches the
scheduler with the worker's registration, with the node's cores as the worker resource
``BALSAM_CORES`` (node.CORES_RESOURCE); the worker plugin stops a task's processes when
the task is cancelled or killed. Without the variable the worker describes itself (its
threads as cores, no GPUs, no allocation end). The worker starts its guard process
(:mod:`balsam_dask.mpi_tasks.guard`): whatever its tasks started is stopped when it dies.
"""

from __future__ import annotations

import multiprocessing
import os
from functools import partial
from typing import Any

from balsam_dask.daskconfig import register as register_dask_config
from balsam_dask.mpi_tasks import guard
from balsam_dask.node import CORES_RESOURCE, ENV_VAR, EXTRA_KEY, NodeConfig
from balsam_dask.runtime import BalsamWorkerPlugin, install


async def dask_setup(worker: Any) -> None:
    # a worker process a Nanny started gets a process group of its own, for what its threads start
    guard.start(own_group=multiprocessing.parent_process() is not None)
    text = os.environ.get(ENV_VAR)
    if text:
        config = NodeConfig.from_env(text)
    else:
        config = NodeConfig(name=str(worker.name), alloc_id="unmanaged", cores=worker.state.nthreads)
    runtime = install(config)
    register_dask_config()
    state = worker.state  # before registration: the scheduler learns the resource with the worker
    if CORES_RESOURCE not in state.total_resources:
        state.total_resources[CORES_RESOURCE] = state.available_resources[CORES_RESOURCE] = config.cores
    info = {**config.to_dict(), "host": runtime.host}
    worker.startup_information[EXTRA_KEY] = lambda _worker: info
    await worker.plugin_add(BalsamWorkerPlugin(runtime), name=BalsamWorkerPlugin.name)
    # get_client() / worker_client() in a task give a balsam_dask.Client: tasks submit tasks with
    # resources, apps and MPI (Dask looks the worker's client up through this method)
    worker._get_client = partial(node_client, worker)
    from balsam_dask.plugin import STREAM_INTERVAL

    worker.batched_stream.interval = STREAM_INTERVAL  # report completions without Dask's 2 ms delay


def node_client(worker: Any, timeout: Any = None) -> Any:
    """The worker's client for its tasks (``get_client()``): the process's own client when it
    talks to this scheduler (a worker in the client's process), else a ``balsam_dask.Client``
    made on first use with the options Dask gives its own worker client."""
    if worker._client is None:
        from distributed.client import default_client

        try:
            existing = default_client()
        except ValueError:
            existing = None
        if (
            existing is not None
            and existing.scheduler is not None
            and (existing.scheduler.address == worker.scheduler.address)
        ):
            worker._client = existing
            return existing
        import dask
        from dask.utils import parse_timedelta
        from distributed import Worker
        from distributed.utils import in_async_call

        from balsam_dask.client import Client

        if timeout is None:
            timeout = dask.config.get("distributed.comm.timeouts.connect")
        asynchronous = in_async_call(worker.loop)
        worker._client = Client(
            worker.scheduler, loop=worker.loop, security=worker.security, set_as_default=True,
            asynchronous=asynchronous, direct_to_workers=True, name="worker", timeout=parse_timedelta(timeout, "s"),
        )  # fmt: skip
        Worker._initialized_clients.add(worker._client)
    return worker._client
