"""Baseline allocation policies that :func:`balsam_dask.packing.policy.decide` must beat.

Pure functions with the same inputs and output as ``decide``; the simulator calls each at
its own documented interval.

Balsam 2 elastic queue (``balsam/site/service/elastic_queue.py`` and the user guide page
"Auto-scaling Resources with Balsam Elastic Queue"). Facts used:

- It runs every ``service_period`` seconds (default 60) and submits at most ONE BatchJob
  per cycle, and none while queued + running BatchJobs >= ``max_queued_jobs`` (default 20).
- Node footprint of a job is ``num_nodes / node_packing_count``; the "idle" node count is
  (nodes of queued and running BatchJobs) - (footprint of running jobs). When the runnable
  footprint exceeds it, it requests ``max(min_num_nodes, runnable - idle)`` nodes, at most
  ``max_num_nodes`` (defaults 20 and 127) and at most the backfill window.
- Without backfill (``use_backfill: False``) the walltime is ``max_wall_time_min``
  (default 360) minus ``wall_time_pad_min`` (default 5).
- A BatchJob queued longer than ``max_queue_wait_time_min`` (default 10) is deleted,
  whatever the backlog; the docs advise a "reasonable upper threshold" when not using
  backfill. Launchers exit after ``idle_ttl_sec`` (default 30) with nothing running.

Dask ``Adaptive`` with one-node dask-jobqueue jobs (distributed's ``Adaptive`` and
``Scheduler.adaptive_target``; dask-jobqueue config). Facts used: ``interval`` 1 s,
``wait_count`` 3 (a worker is retired after 3 consecutive recommendations, i.e. about 3 s
idle), ``target_duration`` 5 s, ``minimum`` 0, ``maximum`` unbounded; the CPU target is
``ceil(expected work / target_duration)`` capped by the number of tasks; scaling down
cancels pending jobs first; dask-jobqueue's default walltime is 30 minutes. Dask has no
multi-node tasks, so gangs are never counted (they cannot run on one-node jobs), and it does
not know the walltime, so a task may be killed when its job ends.

Fixed: one allocation of ``nodes`` nodes for the maximum walltime, resubmitted when it ends
while work remains, released (like a Balsam launcher) after ``idle_ttl`` seconds idle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from balsam_dask.errors import InvalidSpec
from balsam_dask.packing.policy import (
    AllocationRequest,
    AllocationView,
    BacklogShape,
    Decision,
    SiteLimits,
    per_node,
)


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidSpec(f"{name}={value!r} is invalid: use a number >= 0, e.g. {name}=60")


@dataclass(frozen=True)
class ElasticQueueConfig:
    """Balsam 2 ``elastic_queue`` settings (defaults are Balsam's own)."""

    service_period: float = 60.0
    min_num_nodes: int = 20
    max_num_nodes: int = 127
    max_wall_time_min: float = 360.0
    wall_time_pad_min: float = 5.0
    max_queue_wait_time_min: float = 10.0
    max_queued_jobs: int = 20
    idle_ttl_sec: float = 30.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            _positive(name, getattr(self, name))
        if self.wall_time_pad_min >= self.max_wall_time_min:
            raise InvalidSpec("wall_time_pad_min must be less than max_wall_time_min, e.g. 5 and 360")


@dataclass(frozen=True)
class AdaptiveConfig:
    """Dask ``Adaptive`` settings for one-node jobs (defaults are Dask's own)."""

    interval: float = 1.0
    wait_count: int = 3
    target_duration: float = 5.0
    minimum: int = 0
    maximum: int | None = None
    walltime: float = 1800.0

    def __post_init__(self) -> None:
        for name in ("interval", "wait_count", "target_duration", "minimum", "walltime"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class FixedConfig:
    """One allocation of ``nodes`` nodes (None: the site's largest job)."""

    nodes: int | None = None
    walltime: float | None = None
    idle_ttl: float = 30.0


def _idle_for(a: AllocationView, now: float) -> float:
    if a.state != "running" or a.idle_nodes != a.nodes or a.idle_since is None:
        return -1.0
    return now - a.idle_since


def elastic_queue(
    backlog: Sequence[BacklogShape],
    allocations: Sequence[AllocationView],
    limits: SiteLimits,
    now: float,
    config: ElasticQueueConfig = ElasticQueueConfig(),
) -> Decision:
    """One cycle of Balsam 2's elastic queue (without backfill windows)."""
    cancels = [
        a.id
        for a in allocations
        if (a.state == "queued" and a.queued_for > config.max_queue_wait_time_min * 60)
        or _idle_for(a, now) >= config.idle_ttl_sec
    ]
    live = [a for a in allocations if a.id not in cancels]
    reason = "elastic queue"
    requests: tuple[AllocationRequest, ...] = ()
    runnable = running = 0.0
    for s in backlog:
        fit = per_node(s, limits.node)
        if fit == 0 or s.nodes > limits.max_nodes_per_job:
            continue
        runnable += s.count * s.nodes / fit
        running += s.running * s.nodes / fit
    reserved = sum(a.nodes for a in live)
    idle = reserved - running
    if len(live) >= config.max_queued_jobs:
        reason += f": at {config.max_queued_jobs} max queued jobs; will not submit"
    elif runnable > 0 and runnable > idle:
        n = max(config.min_num_nodes, math.ceil(runnable - idle))
        n = min(n, config.max_num_nodes, limits.max_nodes_per_job, limits.max_total_nodes - reserved)
        walltime = min(limits.max_walltime, (config.max_wall_time_min - config.wall_time_pad_min) * 60)
        if n >= max(1, limits.min_nodes):
            requests = (AllocationRequest(n, walltime),)
            reason += f": runnable footprint {runnable:.1f} > idle {idle:.1f}; request {n} nodes"
    return Decision(requests, tuple(cancels), reason)


def dask_adaptive(
    backlog: Sequence[BacklogShape],
    allocations: Sequence[AllocationView],
    limits: SiteLimits,
    now: float,
    config: AdaptiveConfig = AdaptiveConfig(),
) -> Decision:
    """One ``Adaptive`` step with one-node jobs: target workers from the backlog."""
    workers = 0.0
    for s in backlog:
        fit = per_node(s, limits.node)
        if s.nodes > 1 or fit == 0:
            continue  # Dask cannot run multi-node tasks on one-node jobs
        n = s.count + s.running
        duration = s.walltime if s.walltime is not None else limits.default_task_walltime
        # adaptive_target: ceil(work / target_duration) threads, at most one per task, divided
        # by the threads per worker (here: how many such tasks one node-worker runs at once)
        workers += min(n, math.ceil(n * duration / config.target_duration)) / fit
    target = math.ceil(workers)
    maximum = limits.max_total_nodes if config.maximum is None else config.maximum
    target = max(config.minimum, min(target, maximum))
    queued = sorted((a for a in allocations if a.state == "queued"), key=lambda a: -a.submitted_at)
    running = [a for a in allocations if a.state == "running"]
    current = len(queued) + len(running)
    cancels: list[str] = []
    requests: tuple[AllocationRequest, ...] = ()
    if target > current:
        # dask-jobqueue submits target - current jobs; sbatch refuses those beyond the site's
        # queued-job limit, so only the ones that can be accepted are generated.
        walltime = min(config.walltime, limits.max_walltime)
        n_new = min(target - current, max(0, limits.max_queued_jobs - len(queued)))
        requests = tuple(AllocationRequest(1, walltime) for _ in range(n_new))
    elif target < current:
        cancels = [a.id for a in queued[: current - target]]  # pending jobs go first
    # idle workers are retired after wait_count consecutive recommendations
    retire_after = config.wait_count * config.interval
    idle = sorted((a for a in running if _idle_for(a, now) >= retire_after), key=lambda a: a.id)
    n_retire = max(0, min(len(idle), current - len(cancels) - target))
    cancels.extend(a.id for a in idle[:n_retire])
    return Decision(requests, tuple(cancels), f"adaptive target {target} one-node workers, have {current}")


def fixed(
    backlog: Sequence[BacklogShape],
    allocations: Sequence[AllocationView],
    limits: SiteLimits,
    now: float,
    config: FixedConfig = FixedConfig(),
) -> Decision:
    """Keep one allocation of N nodes while work remains; release it when idle."""
    nodes = min(config.nodes or limits.max_nodes_per_job, limits.max_nodes_per_job, limits.max_total_nodes)
    walltime = min(config.walltime or limits.max_walltime, limits.max_walltime)
    waiting = sum(s.count for s in backlog if s.nodes <= nodes and per_node(s, limits.node) > 0)
    cancels = tuple(a.id for a in allocations if _idle_for(a, now) >= config.idle_ttl)
    if waiting and len(allocations) == len(cancels):
        return Decision((AllocationRequest(nodes, walltime),), cancels, f"fixed {nodes} nodes")
    return Decision((), cancels, "fixed")
