"""What the live page shows, computed from the scheduler plugin's in-memory state: each node's
cores and GPUs by task kind, gangs, reservations and holds, allocations with their walltime
left, task counts by state over time and the latest failures. Pure (no Dask, no I/O): the
plugin's glue (``scheduler/live.py``) hands it the placer's nodes and its own records, and a
snapshot costs O(nodes + running tasks + recent samples and failures), never O(tasks)."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from balsam_dask.packing.records import NodeStatus
from balsam_dask.spec import KINDS, TaskSpec

TaskId = Hashable
#: Failures kept (attempts and tasks), newest last; a snapshot shows the newest ``SHOWN``.
RECENT = 50
SHOWN = 20
#: Characters of an error's tail kept for the page.
TAIL = 2000
#: Samples of the counts kept (at one a second: an hour).
SAMPLES = 3600
#: The kind of a plain Dask task (no spec) and of a task the recorder no longer tracks.
OTHER = "other"


class Failure(NamedTuple):
    """A failed attempt (RUN_ERROR, RUN_TIMEOUT: retried) or task (FAILED)."""

    ts: float
    task_id: int
    name: str
    kind: str
    state: str
    tail: str


class Failures:
    """The latest failures, bounded: adding one is O(1)."""

    def __init__(self, keep: int = RECENT) -> None:
        self.items: deque[Failure] = deque(maxlen=keep)

    def add(self, ts: float, task_id: int, key: Hashable, spec: TaskSpec | None, state: str, text: str | None) -> None:
        name = (spec.name if spec is not None else None) or (key if isinstance(key, str) else str(key))
        kind = spec.kind if spec is not None else OTHER
        self.items.append(Failure(ts, task_id, name, kind, state, (text or "")[-TAIL:]))

    def newest(self, n: int = SHOWN) -> tuple[Failure, ...]:
        items = self.items
        return tuple(items[i] for i in range(len(items) - 1, max(len(items) - n, 0) - 1, -1))


class History:
    """Task counts by state, one sample per ``sample`` call (the plugin's poll), bounded."""

    def __init__(self, states: Sequence[str], keep: int = SAMPLES) -> None:
        self.states = tuple(states)
        self.samples: deque[tuple[float, tuple[int, ...]]] = deque(maxlen=keep)

    def sample(self, now: float, counts: Mapping[str, int]) -> None:
        self.samples.append((now, tuple(counts.get(s, 0) for s in self.states)))

    def since(self, t: float) -> tuple[tuple[float, tuple[int, ...]], ...]:
        """The samples taken after ``t``, oldest first: O(those samples)."""
        samples = self.samples
        i = len(samples)
        while i > 0 and samples[i - 1][0] > t:
            i -= 1
        return tuple(samples[j] for j in range(i, len(samples)))


class NodeInput(NamedTuple):
    """One node as the placer sees it: its status, its name, and (task, cores, GPUs) of each
    task running there (a gang: the whole node)."""

    status: NodeStatus
    label: str
    usage: tuple[tuple[TaskId, int, int], ...]


class AllocationInput(NamedTuple):
    """An allocation the plugin recorded (``new_allocation``/``update_allocation``)."""

    job_id: str
    system: str
    state: str
    nodes: int
    walltime: float | None
    started_at: float | None


@dataclass(frozen=True)
class NodeUse:
    name: str
    alloc_id: str
    cores: int
    gpus: int
    #: Cores and GPUs in use by task kind (``KINDS`` order, then ``OTHER``), zeros included.
    cores_by_kind: tuple[int, ...]
    gpus_by_kind: tuple[int, ...]
    free_cores: int
    free_gpus: int
    running: int
    queued: int
    gang: TaskId | None
    reserved_for: TaskId | None
    held_for: TaskId | None
    draining: bool

    @property
    def busy_cores(self) -> int:
        return self.cores - self.free_cores

    @property
    def busy_gpus(self) -> int:
        return self.gpus - self.free_gpus


@dataclass(frozen=True)
class AllocationUse:
    job_id: str
    system: str
    state: str
    nodes: int  # asked for
    live_nodes: int  # node-workers connected now
    walltime: float | None
    left: float | None  # seconds of walltime left (None: no end known)


class Keep(NamedTuple):
    """A gang running on nodes, a gang's reservation, or a node held for a starving task."""

    task_id: TaskId
    what: str  # "gang", "reserved" or "held"
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    time: float
    nodes: tuple[NodeUse, ...]
    allocations: tuple[AllocationUse, ...]
    keeps: tuple[Keep, ...]
    states: tuple[str, ...]
    counts: tuple[int, ...]  # now, in ``states`` order
    history: tuple[tuple[float, tuple[int, ...]], ...]  # samples after the ``since`` asked
    failures: tuple[Failure, ...]  # newest first

    @property
    def cores(self) -> tuple[int, int]:
        """(busy, all) cores of the nodes."""
        return sum(n.busy_cores for n in self.nodes), sum(n.cores for n in self.nodes)

    @property
    def gpus(self) -> tuple[int, int]:
        return sum(n.busy_gpus for n in self.nodes), sum(n.gpus for n in self.nodes)


#: The columns of ``NodeUse.cores_by_kind``.
USE_KINDS: tuple[str, ...] = (*KINDS, OTHER)


def natural(name: str) -> tuple[Any, ...]:
    """Sort key: ``node-2`` before ``node-10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def node_use(node: NodeInput, kind_of: Callable[[TaskId], str], gangs: Mapping[TaskId, tuple[str, ...]],
             held: Mapping[str, TaskId]) -> NodeUse:  # fmt: skip
    """One node's use by kind. ``kind_of(task)``: a task's kind (``USE_KINDS``);
    ``gangs``: running gangs and their nodes; ``held``: node -> the task it is held for."""
    st = node.status
    cores = [0] * len(USE_KINDS)
    gpus = [0] * len(USE_KINDS)
    for task_id, c, g in node.usage:
        kind = kind_of(task_id)
        i = USE_KINDS.index(kind) if kind in USE_KINDS else len(USE_KINDS) - 1
        cores[i] += c
        gpus[i] += g
    gang = st.running[0] if len(st.running) == 1 and st.running[0] in gangs else None
    return NodeUse(node.label, st.alloc_id, st.cores, st.gpus, tuple(cores), tuple(gpus), st.free_cores,
                   len(st.free_gpus), len(st.running), len(st.queued), gang, st.reserved_by, held.get(st.name),
                   st.draining)  # fmt: skip


def allocation_uses(now: float, records: Iterable[AllocationInput], nodes: Iterable[NodeStatus]) -> list[AllocationUse]:
    """Live allocations: the recorded ones, and those only their node-workers tell of (started
    outside this scheduler's clusters). Walltime left: from the nodes' end time, else from the
    start and walltime."""
    live: dict[str, int] = {}
    end: dict[str, float] = {}
    for n in nodes:
        live[n.alloc_id] = live.get(n.alloc_id, 0) + 1
        if n.end_time is not None:
            end[n.alloc_id] = min(end.get(n.alloc_id, n.end_time), n.end_time)
    out = []
    seen = set()
    for r in records:
        seen.add(r.job_id)
        stop = end.get(r.job_id)
        if stop is None and r.started_at is not None and r.walltime:
            stop = r.started_at + r.walltime
        left = None if stop is None else max(stop - now, 0.0)
        out.append(AllocationUse(r.job_id, r.system, r.state, r.nodes, live.get(r.job_id, 0), r.walltime, left))
    for job_id, count in live.items():
        if job_id not in seen:
            stop = end.get(job_id)
            left = None if stop is None else max(stop - now, 0.0)
            out.append(AllocationUse(job_id, "-", "RUNNING", count, count, None, left))
    return out


def take(now: float, nodes: Sequence[NodeInput], kind_of: Callable[[TaskId], str],
         gangs: Mapping[TaskId, tuple[str, ...]], reservations: Mapping[TaskId, tuple[str, ...]],
         holds: Mapping[TaskId, str], allocations: Iterable[AllocationInput], counts: Mapping[str, int],
         history: History, failures: Failures, since: float = 0.0) -> Snapshot:  # fmt: skip
    """A snapshot at ``now``; ``history``'s samples after ``since`` only (a page that has the
    older ones asks for the new ones). Node names in ``gangs``, ``reservations`` and ``holds``
    are the placer's (worker addresses); the snapshot names nodes by their labels (a gang's
    leader first)."""
    label = {n.status.name: n.label for n in nodes}
    held = {node: tid for tid, node in holds.items()}
    uses = tuple(sorted((node_use(n, kind_of, gangs, held) for n in nodes), key=lambda u: natural(u.name)))
    keeps = [Keep(t, "gang", tuple(label.get(n, n) for n in ns)) for t, ns in gangs.items()]
    keeps += [Keep(t, "reserved", tuple(sorted((label.get(n, n) for n in ns), key=natural)))
              for t, ns in reservations.items()]  # fmt: skip
    keeps += [Keep(t, "held", (label.get(n, n),)) for t, n in holds.items()]
    allocs = allocation_uses(now, allocations, (n.status for n in nodes))
    return Snapshot(now, uses, tuple(allocs), tuple(keeps), history.states,
                    tuple(counts.get(s, 0) for s in history.states), history.since(since),
                    failures.newest())  # fmt: skip
