"""What makes a Dask worker a node-worker (called by the preload ``balsam_dask.worker_setup``).

The node's config reaches the scheduler with the worker's registration, with the node's cores
as the worker resource ``CORES_RESOURCE``; the worker plugin stops a task's processes when the
task is cancelled or killed; the worker's guard process (:mod:`balsam_dask.worker.guard`) stops
whatever its tasks started when it dies.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

from balsam_dask.daskconfig import register as register_dask_config
from balsam_dask.protocol import CORES_RESOURCE, ENV_VAR, EXTRA_KEY, STREAM_INTERVAL, NodeConfig
from balsam_dask.worker import guard
from balsam_dask.worker.bundles import BundleExecutor
from balsam_dask.worker.runtime import BalsamWorkerPlugin, install
from balsam_dask.worker.threads import pin_missing


async def setup_node(worker: Any) -> None:
    """Make ``worker`` a node-worker: its guard, runtime, resources and registration info."""
    # a worker process a Nanny started gets a process group of its own, for what its threads start
    nanny = multiprocessing.parent_process() is not None
    guard.start(own_group=nanny)
    if nanny:  # its one-thread pools, every pool variable alike
        pin_missing(os.environ)
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
    bundles = BundleExecutor(worker, runtime)
    bundles.install()
    await worker.plugin_add(BalsamWorkerPlugin(runtime, bundles), name=BalsamWorkerPlugin.name)
    worker.batched_stream.interval = STREAM_INTERVAL  # report completions without Dask's 2 ms delay
