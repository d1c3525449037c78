"""Dask worker preload that makes a worker a balsam_dask node-worker:
``dask worker --preload balsam_dask.worker_setup`` (or ``preload=[...]`` on a Nanny), with
``$BALSAM_DASK_NODE`` set to a :class:`~balsam_dask.protocol.NodeConfig` (without it the worker
describes itself: its threads as cores, no GPUs, no allocation end)."""

from __future__ import annotations

from functools import partial
from typing import Any

from balsam_dask.client.nested import node_client
from balsam_dask.worker.setup import setup_node


async def dask_setup(worker: Any) -> None:
    await setup_node(worker)
    # Dask looks the worker's client up through this method: tasks get a balsam_dask.Client
    worker._get_client = partial(node_client, worker)
