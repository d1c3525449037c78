"""The ``balsam_dask.Client`` that tasks get from ``get_client()`` / ``worker_client()``: tasks
submit tasks with resources, apps and MPI."""

from __future__ import annotations

from typing import Any

from balsam_dask.client.client import Client


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

        if timeout is None:
            timeout = dask.config.get("distributed.comm.timeouts.connect")
        asynchronous = in_async_call(worker.loop)
        worker._client = Client(
            worker.scheduler, loop=worker.loop, security=worker.security, set_as_default=True,
            asynchronous=asynchronous, direct_to_workers=True, name="worker", timeout=parse_timedelta(timeout, "s"),
        )  # fmt: skip
        Worker._initialized_clients.add(worker._client)
    return worker._client
