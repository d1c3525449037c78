"""Worker-side state of a node-worker: its GPU pool and the processes of running tasks.

One :class:`NodeRuntime` per worker process, installed by ``balsam_dask.worker_setup``
(or made on first use from the worker itself). :class:`BalsamWorkerPlugin` stops a task's
process group when Dask cancels the task on this worker, and when the scheduler plugin
sends ``balsam_kill`` (``client.kill``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin

from balsam_dask.protocol import ENV_VAR, KILL_OP, NodeConfig
from balsam_dask.worker.seceded import release_worker_cores
from balsam_dask.worker.threads import PoolLimits

log = logging.getLogger(__name__)

#: Worker task states that mean "this run is no longer wanted here".
_ABANDONED = frozenset({"cancelled", "released", "forgotten"})


@dataclass
class RunHandle:
    """A running balsam task on this worker: set ``kill_event`` to stop its processes."""

    key: str
    kill_event: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None

    def kill(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.kill_event.set()


class NodeRuntime:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.host = config.host or socket.gethostname()
        self._gpu_cond = threading.Condition()
        self._free_gpus: list[str] = list(config.gpu_ids)
        self._runs: dict[str, RunHandle] = {}
        self._lock = threading.Lock()
        self.pools = PoolLimits()  # BLAS/OpenMP pool sizes of the tasks in this worker's threads

    # --- GPUs ---
    def acquire_gpus(self, n: int, wanted: Iterable[str] = (), timeout: float = 30.0) -> tuple[str, ...]:
        """Take ``n`` GPU ids (the ``wanted`` ones if the scheduler chose them).

        The scheduler never dispatches more GPUs than the node has, but a killed task's
        process may still hold its ids for a moment: wait for them rather than share."""
        if n <= 0:
            return ()
        wanted = [g for g in wanted if g in self.config.gpu_ids]
        with self._gpu_cond:
            ok = self._gpu_cond.wait_for(lambda: len(self._free_gpus) >= n, timeout)
            if not ok:
                raise RuntimeError(
                    f"node {self.config.name}: {n} GPU(s) requested but only {self._free_gpus} free after {timeout}s"
                )
            take = [g for g in wanted if g in self._free_gpus][:n]
            for g in self._free_gpus:
                if len(take) == n:
                    break
                if g not in take:
                    take.append(g)
            for g in take:
                self._free_gpus.remove(g)
            return tuple(take)

    def release_gpus(self, ids: Iterable[str]) -> None:
        with self._gpu_cond:
            for g in ids:
                if g not in self._free_gpus:
                    self._free_gpus.append(g)
            self._gpu_cond.notify_all()

    @property
    def free_gpus(self) -> tuple[str, ...]:
        with self._gpu_cond:
            return tuple(self._free_gpus)

    # --- running tasks ---
    def register(self, key: str) -> RunHandle:
        handle = RunHandle(key)
        with self._lock:
            self._runs[key] = handle
        return handle

    def unregister(self, handle: RunHandle) -> None:
        with self._lock:
            if self._runs.get(handle.key) is handle:
                del self._runs[handle.key]

    def kill(self, keys: Iterable[str], reason: str) -> list[str]:
        killed = []
        with self._lock:
            for key in keys:
                handle = self._runs.get(key)
                if handle is not None:
                    handle.kill(reason)
                    killed.append(key)
        return killed


_runtime: NodeRuntime | None = None
_runtime_lock = threading.Lock()


def install(config: NodeConfig) -> NodeRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.config != config:
            _runtime = NodeRuntime(config)
        return _runtime


def get_runtime() -> NodeRuntime:
    """This worker's runtime; made from $BALSAM_DASK_NODE or the worker itself if needed."""
    if _runtime is not None:
        return _runtime
    text = os.environ.get(ENV_VAR)
    if text:
        return install(NodeConfig.from_env(text))
    from distributed import get_worker

    try:
        worker = get_worker()
        cores = worker.state.nthreads
        name = str(worker.name)
    except ValueError:
        cores, name = os.cpu_count() or 1, socket.gethostname()
    return install(NodeConfig(name=name, alloc_id="unmanaged", cores=cores))


class BalsamWorkerPlugin(WorkerPlugin):
    """Stops a task's processes when the task is cancelled or killed on this worker; a task
    that secedes gives its cores back (worker/seceded.py)."""

    name = "balsam-dask"

    def __init__(self, runtime: NodeRuntime | None = None, bundles: Any = None) -> None:
        self.runtime = runtime
        self.bundles = bundles  # the node's BundleExecutor (worker/bundles.py), if any
        self.worker: Any = None

    def setup(self, worker: Any) -> None:
        self.worker = worker
        if self.runtime is None:
            self.runtime = get_runtime()
        worker.stream_handlers[KILL_OP] = self._on_kill

    def _on_kill(self, keys: list[str], reason: str = "killed", **_: Any) -> None:
        assert self.runtime is not None
        killed = self.runtime.kill(keys, reason)
        if self.bundles is not None:
            self.bundles.kill(keys, reason)
        if killed:
            log.info("balsam_dask: killing %d task(s): %s", len(killed), reason)

    def teardown(self, worker: Any) -> None:
        if self.bundles is not None:
            self.bundles.close()

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if start == "executing" and finish in _ABANDONED and self.runtime is not None:
            self.runtime.kill([str(key)], "cancelled")
        elif finish == "long-running" and self.worker is not None:  # it seceded: its cores are free
            release_worker_cores(self.worker, key)
