"""``PolicyAdaptive``: Dask's Adaptive loop, deciding with the packing policy.

Every ``interval`` it reads the backlog of runnable balsam tasks by resource shape (from the
scheduler plugin's placer), the cluster's allocations (queued or running, their idle nodes
and remaining time), and asks :func:`~balsam_dask.packing.policy.decide` which allocations
to request, which to cancel, and which idle nodes of running ones to give back. A node
holding a result a client still references is never counted idle, so neither an allocation
nor a node is retired from under live results (Dask's own Adaptive, with a target of 0,
closes such workers and the results are recomputed). ``extra_backlog`` adds shapes of work
not yet submitted to the scheduler (``balsam-dask serve``: the store's whole backlog).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from distributed.deploy.adaptive import Adaptive

from balsam_dask.errors import AllocationError
from balsam_dask.packing.policy import AllocationView, BacklogShape, Decision, SiteLimits, decide

log = logging.getLogger(__name__)


class PolicyAdaptive(Adaptive):
    cluster: Any  # an AllocationCluster

    def __init__(self, cluster: Any, *, limits: SiteLimits, interval: Any = "2s",
                 extra_backlog: Callable[[], list[BacklogShape]] | None = None, **kwargs: Any) -> None:  # fmt: skip
        self.limits = limits
        self.extra_backlog = extra_backlog
        self.decisions: list[tuple[float, Decision]] = []
        self._idle_since: dict[str, float] = {}
        self._node_idle_since: dict[str, float] = {}  # releasable node-workers, by name
        super().__init__(cluster, interval=interval, minimum=0, maximum=limits.max_total_nodes, wait_count=1,
                         **kwargs)  # fmt: skip

    def backlog(self) -> list[BacklogShape]:
        """The placer's backlog by shape, and the extra backlog's shapes."""
        counts = self.cluster.plugin.placer.backlog_counts()
        shapes = [BacklogShape(nodes, cores, gpus, wt, waiting, running)
                  for (nodes, cores, gpus, wt), (waiting, running) in counts.items()]  # fmt: skip
        if self.extra_backlog is not None:
            shapes += self.extra_backlog()
        return shapes

    def allocations(self, now: float) -> list[AllocationView]:
        usage = self.cluster.node_usage()
        releasable = self.cluster.releasable_nodes()
        now_idle = {w for names in releasable.values() for w in names}
        self._node_idle_since = {w: self._node_idle_since.get(w, now) for w in now_idle}
        views = []
        for name, info in self.cluster.jobs.items():
            if info["state"] not in ("PENDING", "QUEUED", "RUNNING"):
                self._idle_since.pop(name, None)
                continue
            registered, idle = usage.get(name, (0, 0))
            running = info["state"] == "RUNNING" or registered > 0
            idle_nodes = idle if running else 0
            if running and idle_nodes == info["nodes"]:
                self._idle_since.setdefault(name, now)
            else:
                self._idle_since.pop(name, None)
            started = info["started_at"] or (now if running else None)
            rel = tuple((w, self._node_idle_since[w]) for w in releasable.get(name, ()))
            rel = rel[:idle_nodes] if running else ()
            wall = info["walltime"]
            views.append(AllocationView(
                id=name, nodes=info["nodes"], idle_nodes=idle_nodes, state="running" if running else "queued",
                submitted_at=info["submitted_at"], started_at=started,
                end_time=(started + wall) if (running and wall and started) else None,
                queued_for=0.0 if running else now - info["submitted_at"], walltime=wall,
                idle_since=self._idle_since.get(name), releasable=rel,
            ))  # fmt: skip
        return views

    def decide(self, now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        return decide(self.backlog(), self.allocations(now), self.limits, now)

    async def adapt(self) -> None:
        if self._adapting:
            return
        self._adapting = True
        try:
            now = time.time()
            decision = self.decide(now)
            if decision.requests or decision.cancels or decision.releases:
                self.decisions.append((now, decision))
                log.info("balsam_dask: policy: %s", decision.reason)
            for name in decision.cancels:
                if name in self.cluster.worker_spec:
                    await self.cluster.cancel_async(name)
            for name, workers in decision.releases:
                if name in self.cluster.worker_spec:
                    await self.cluster.release_nodes_async(name, workers)
            for req in decision.requests:
                try:
                    await self.cluster.request_async(req.nodes, req.walltime)
                except AllocationError as e:  # backing off after failed submissions
                    log.warning("balsam_dask: %s", e)
                    break
        finally:
            self._adapting = False
