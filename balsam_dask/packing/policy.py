"""Allocation sizing: a pure function from the backlog and the allocations to decisions.
(Design notes: docs/ARCHITECTURE.md, packing/policy.py.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from balsam_dask import validate
from balsam_dask.errors import InvalidSpec
from balsam_dask.spec import NodeShape

#: Fraction of allocated node-seconds assumed usable by tasks (packing, tails, startup).
EFFICIENCY = 0.9
#: Share of a running task's walltime estimate assumed still to come.
RUNNING_LEFT = 0.5
#: Extra walltime beyond the longest task: node-worker startup and scheduling slack.
WALLTIME_PAD = 120.0
#: Jobs run for RUN_FACTOR x the longest waiting task: per node there is then work for
#: several tasks, so the end-of-work tail (nodes idle while the last tasks finish) is short.
RUN_FACTOR = 1.5
#: A request is split over at most (free queue slots) / SPLIT_SLOTS jobs.
SPLIT_SLOTS = 2
#: A node left idle this many ``idle_timeout`` in a job some waiting task could use (the
#: placer, which places whatever fits at once, found nothing for it) is given back as well,
#: as long as the job stays as wide as the waiting gangs it hosts, the running jobs'
#: capacity left still covers the backlog and no job is queued (no request follows).
UNUSED_AFTER = 2.0


@dataclass(frozen=True)
class BacklogShape:
    """Tasks of one resource shape: ``count`` waiting, ``running`` running."""

    nodes: int
    cores: int
    gpus: int
    walltime: float | None
    count: int
    running: int = 0

    def __post_init__(self) -> None:
        validate.integer("nodes", self.nodes, "nodes=1", 1)
        validate.integer("cores", self.cores, "cores=4", 1)
        validate.integer("gpus", self.gpus, "gpus=0", 0)
        if self.walltime is not None:
            validate.number("walltime", self.walltime, "walltime=600.0", above=0)
        validate.integer("count", self.count, "count=100", 0)
        validate.integer("running", self.running, "running=0", 0)


@dataclass(frozen=True)
class AllocationView:
    """One batch job as the policy sees it. ``walltime`` is the requested limit (seconds);
    ``idle_since`` is when every node last became idle (None while any node is busy);
    ``releasable`` names the nodes that could be given back alone (idle, not kept for a gang)
    with when each became idle."""

    id: str
    nodes: int
    idle_nodes: int
    state: Literal["queued", "running"]
    submitted_at: float
    started_at: float | None
    end_time: float | None
    queued_for: float
    walltime: float | None = None
    idle_since: float | None = None
    releasable: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.state not in ("queued", "running"):
            raise InvalidSpec(f"state={self.state!r} is invalid: use 'queued' or 'running'")
        validate.integer("nodes", self.nodes, "nodes=128", 1)
        if not isinstance(self.idle_nodes, int) or not 0 <= self.idle_nodes <= self.nodes:
            raise InvalidSpec(f"idle_nodes={self.idle_nodes!r} is invalid: use 0 <= idle_nodes <= nodes={self.nodes}")
        if self.releasable and (
            self.state != "running"
            or len(self.releasable) > self.idle_nodes
            or not all(isinstance(n, str) and n and isinstance(t, (int, float)) for n, t in self.releasable)
        ):
            raise InvalidSpec(
                f"releasable={self.releasable!r} is invalid for a {self.state} job with {self.idle_nodes} idle "
                "node(s): give at most idle_nodes (node name, idle since) pairs of a running job, "
                "e.g. (('job7-3', 1700000000.0),)"
            )
        validate.number("queued_for", self.queued_for, "queued_for=0.0", 0)

    def remaining(self, now: float) -> float:
        """Seconds of usable time: the walltime while queued, time to the end once running."""
        if self.state == "queued":
            return math.inf if self.walltime is None else self.walltime
        return math.inf if self.end_time is None else max(0.0, self.end_time - now)


@dataclass(frozen=True)
class SiteLimits:
    """What the site's batch queue allows, and the policy's timeouts (seconds)."""

    min_nodes: int
    max_nodes_per_job: int
    max_walltime: float
    min_walltime: float
    max_queued_jobs: int
    max_total_nodes: int
    node: NodeShape
    queued_timeout: float = 4 * 3600.0
    idle_timeout: float = 60.0
    default_task_walltime: float = 3600.0

    def __post_init__(self) -> None:
        validate.integer("min_nodes", self.min_nodes, "min_nodes=1", 1)
        validate.integer("max_nodes_per_job", self.max_nodes_per_job, "max_nodes_per_job=1024", self.min_nodes)
        validate.integer("max_total_nodes", self.max_total_nodes, "max_total_nodes=4096", self.min_nodes)
        validate.integer("max_queued_jobs", self.max_queued_jobs, "max_queued_jobs=20", 1)
        validate.number("min_walltime", self.min_walltime, "min_walltime=600.0", above=0)
        validate.number("max_walltime", self.max_walltime, "max_walltime=21600.0", self.min_walltime)
        validate.number("queued_timeout", self.queued_timeout, "queued_timeout=14400.0", 0)
        validate.number("idle_timeout", self.idle_timeout, "idle_timeout=60.0", 0)
        validate.number("default_task_walltime", self.default_task_walltime, "default_task_walltime=3600.0", above=0)
        if not isinstance(self.node, NodeShape):
            raise InvalidSpec(f"node={self.node!r} is invalid: pass NodeShape(cores=64, gpus=4)")


@dataclass(frozen=True)
class AllocationRequest:
    nodes: int
    walltime: float


@dataclass(frozen=True)
class Decision:
    """``releases``: (job id, node names) of running jobs that give back some idle nodes."""

    requests: tuple[AllocationRequest, ...] = ()
    cancels: tuple[str, ...] = ()
    reason: str = ""
    releases: tuple[tuple[str, tuple[str, ...]], ...] = ()


def per_node(shape: BacklogShape, node: NodeShape) -> int:
    """How many tasks of ``shape`` run at once on one node (0 if none fits)."""
    if shape.cores > node.cores or shape.gpus > node.gpus:
        return 0
    if shape.nodes > 1:
        return 1
    fit = node.cores // shape.cores
    if shape.gpus:
        fit = min(fit, node.gpus // shape.gpus)
    return fit


def unplaceable_reason(shape: BacklogShape, limits: SiteLimits) -> str | None:
    """Why tasks of this shape can never run at this site, or None."""
    n = limits.node
    if shape.cores > n.cores or shape.gpus > n.gpus:
        return (
            f"{shape.count} task(s) need {shape.cores} cores and {shape.gpus} GPUs per node; "
            f"nodes have {n.cores} cores and {n.gpus} GPUs"
        )
    if shape.nodes > limits.max_nodes_per_job:
        return f"{shape.count} task(s) need {shape.nodes} nodes; a job may have at most {limits.max_nodes_per_job}"
    wt = shape.walltime if shape.walltime is not None else limits.default_task_walltime
    if wt > limits.max_walltime:
        return f"{shape.count} task(s) need walltime {wt:g} s; the site allows at most {limits.max_walltime:g} s"
    return None


def decide(
    backlog: Sequence[BacklogShape],
    allocations: Sequence[AllocationView],
    limits: SiteLimits,
    now: float,
    *,
    run_factor: float = RUN_FACTOR,
) -> Decision:
    """Allocation requests and cancellations for this backlog (pure and deterministic).

    ``run_factor`` trades time for node-hours: jobs are sized to run about ``run_factor``
    times the longest waiting task, so 1.0 finishes sooner on more nodes and larger values
    waste less in the end-of-work tail.
    """
    if isinstance(run_factor, bool) or not isinstance(run_factor, (int, float)) or not run_factor >= 1:
        raise InvalidSpec(f"run_factor={run_factor!r} is invalid: use a number >= 1, e.g. run_factor=1.5")
    notes: list[str] = []
    todo: list[tuple[BacklogShape, float]] = []  # waiting, runnable shapes with their walltime
    work = running_work = 0.0
    for s in backlog:
        why = unplaceable_reason(s, limits)
        if why is not None:
            if s.count:
                notes.append(f"cannot place: {why}")
            continue
        wt = s.walltime if s.walltime is not None else limits.default_task_walltime
        cost = s.nodes * wt / per_node(s, limits.node)
        running_work += s.running * cost * RUNNING_LEFT
        if s.count:
            todo.append((s, wt))
            work += s.count * cost

    def serves(a: AllocationView) -> bool:
        rem = a.remaining(now)
        return any(s.nodes <= a.nodes and wt <= rem for s, wt in todo)

    # Cancels and releases: only jobs no waiting task could use.
    cancels: list[str] = []
    releases: list[tuple[str, tuple[str, ...]]] = []
    for a in sorted(allocations, key=lambda a: a.id):
        if serves(a):
            continue
        if a.state == "queued" and a.queued_for > limits.queued_timeout:
            cancels.append(a.id)
            notes.append(f"cancel {a.id}: queued {a.queued_for:.0f} s and no waiting task needs it")
        elif (
            a.state == "running"
            and a.idle_nodes == a.nodes
            and a.idle_since is not None
            and now - a.idle_since >= limits.idle_timeout
        ):
            cancels.append(a.id)
            notes.append(f"release {a.id}: idle {now - a.idle_since:.0f} s and no waiting task needs it")
        elif a.state == "running" and a.releasable:
            names = tuple(sorted(n for n, since in a.releasable if now - since >= limits.idle_timeout))
            if names and len(names) < a.nodes:  # all of them: that is the cancel above, once idle long enough
                releases.append((a.id, names))
                notes.append(f"release {len(names)} idle node(s) of {a.id}: no waiting task needs it")
    live = [a for a in allocations if a.id not in cancels]

    # Running tasks sit on running allocations: they use up those, never queued ones.
    cap = {state: sum(a.nodes * min(a.remaining(now), 1e12) for a in live if a.state == state and serves(a))
           for state in ("running", "queued")}  # fmt: skip
    capacity = cap["running"] + cap["queued"]
    deficit = _deficit(work, running_work, cap)
    deficit = _release_unused(todo, live, limits, now, work, running_work, cap, deficit, releases, notes)
    if releases:  # released nodes are gone at once: they free room under max_total_nodes now
        n_rel = {aid: len(names) for aid, names in releases}
        live = [replace(a, nodes=a.nodes - n_rel[a.id], idle_nodes=a.idle_nodes - n_rel[a.id], releasable=())
                if a.id in n_rel else a for a in live]  # fmt: skip
    unhosted = [
        (s, wt)
        for s, wt in todo
        if s.nodes > 1 and not any(a.nodes >= s.nodes and a.remaining(now) >= wt for a in live)
    ]
    requests: list[AllocationRequest] = []
    # (a relative tolerance: a request sized to cover a deficit exactly can fall short by a rounding error)
    if todo and (deficit > 1e-9 * work or unhosted):
        requests = _size(todo, live, limits, max(deficit, 0.0), unhosted, notes, run_factor)
    summary = (
        f"backlog {sum(s.count for s, _ in todo)} task(s), {work:.3g} node-s; usable capacity "
        f"{capacity * EFFICIENCY:.3g} node-s less {running_work:.3g} running"
    )
    if requests:
        summary += "; request " + ", ".join(f"{r.nodes} nodes x {r.walltime:.0f} s" for r in requests)
    return Decision(tuple(requests), tuple(cancels), "; ".join([summary, *notes]), tuple(releases))


def _deficit(work: float, running_work: float, cap: dict[str, float]) -> float:
    """Node-seconds of waiting work the allocations' usable capacity does not cover; the
    running tasks' remaining work uses up the running allocations' share first."""
    return work - max(0.0, cap["running"] * EFFICIENCY - running_work) - cap["queued"] * EFFICIENCY


def _release_unused(
    todo: list[tuple[BacklogShape, float]], live: list[AllocationView], limits: SiteLimits, now: float,
    work: float, running_work: float, cap: dict[str, float], deficit: float,
    releases: list[tuple[str, tuple[str, ...]]], notes: list[str],
) -> float:  # fmt: skip
    """Idle nodes of running jobs that waiting tasks could use but the placer left unused
    (see ``UNUSED_AFTER``); appends to ``releases``, returns the deficit without them."""
    if deficit > 0 or any(a.state == "queued" for a in live):
        return deficit  # more capacity is wanted, or was wanted recently: no running node goes
    done = {aid for aid, _ in releases}
    for a in sorted(live, key=lambda a: a.id):
        if a.state != "running" or not a.releasable or a.id in done:
            continue
        rem = a.remaining(now)
        fits = [s for s, wt in todo if s.nodes <= a.nodes and wt <= rem]
        if not fits:
            continue  # no waiting task can use it: handled with the cancels
        keep = max(1, max(s.nodes for s in fits))  # still wide enough for every gang it hosts
        names = sorted(n for n, since in a.releasable if now - since >= UNUSED_AFTER * limits.idle_timeout)
        names = names[: max(0, a.nodes - keep)]
        while names:
            left = {**cap, "running": cap["running"] - len(names) * min(rem, 1e12)}
            if _deficit(work, running_work, left) <= 0:
                break
            names.pop()  # keep what the backlog needs
        if names:
            cap["running"] -= len(names) * min(rem, 1e12)
            deficit = _deficit(work, running_work, cap)
            releases.append((a.id, tuple(names)))
            notes.append(f"release {len(names)} node(s) of {a.id} left idle by the placer")
    return deficit


def _size(
    todo: list[tuple[BacklogShape, float]],
    live: list[AllocationView],
    limits: SiteLimits,
    deficit: float,
    unhosted: list[tuple[BacklogShape, float]],
    notes: list[str],
    run_factor: float,
) -> list[AllocationRequest]:
    slots = limits.max_queued_jobs - sum(1 for a in live if a.state == "queued")
    room = limits.max_total_nodes - sum(a.nodes for a in live)
    widest = max(s.nodes for s, _ in todo)
    low = max(limits.min_nodes, widest)
    if slots <= 0:
        notes.append(f"waiting: {limits.max_queued_jobs} job(s) already queued (max_queued_jobs)")
        return []
    if room < low:
        notes.append(f"waiting: only {room} node(s) left under max_total_nodes={limits.max_total_nodes}")
        return []
    longest = max(wt for _, wt in todo)
    walltime = min(limits.max_walltime, max(limits.min_walltime, longest * run_factor + WALLTIME_PAD))
    # Longer jobs only when the nodes we may still add cannot cover the deficit in time.
    walltime = min(limits.max_walltime, max(walltime, deficit / (room * EFFICIENCY)))
    nodes = min(room, max(math.ceil(deficit / (walltime * EFFICIENCY)), low if unhosted else 0))
    if nodes <= 0:
        return []
    # Several smaller jobs rather than one big one: each is released as soon as its own
    # nodes are idle, so the end-of-work tail wastes less; half the free queue slots are
    # kept for later requests.
    jobs = min(
        slots,
        max(math.ceil(nodes / limits.max_nodes_per_job), min(max(1, slots // SPLIT_SLOTS), nodes // low)),
    )
    size = min(limits.max_nodes_per_job, max(low, math.ceil(nodes / jobs)))
    out: list[AllocationRequest] = []
    while len(out) < jobs and room >= low:
        n = min(size, room)
        out.append(AllocationRequest(n, walltime))
        room -= n
    if len(out) * limits.max_nodes_per_job < nodes:
        notes.append(f"capped at {len(out)} job(s) by max_queued_jobs/max_total_nodes")
    return out
