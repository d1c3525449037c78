"""The placement engine's records: what it is told (nodes), what it answers (assignments) and
the task, node and reservation records its components share. Pure."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from balsam_dask import validate
from balsam_dask.errors import BalsamDaskError, InvalidSpec
from balsam_dask.spec import Resources

TaskId = Hashable
QueueKey = tuple[int, int, "float | None"]  # (cores per node, GPUs per node, walltime class)
Key = tuple[int, int, float]  # (free cores, free GPUs, usable until)
INF = math.inf
#: Task states inside the engine (QUEUED: prefetched on a full node, see prefetch.py).
WAITING, RUNNING, GONE, QUEUED = 1, 2, 3, 4


class PlacementInvariantError(BalsamDaskError):
    """The placer's accounting is inconsistent (a bug, never a user error)."""


class PlacementError(BalsamDaskError, ValueError):
    """A placer call does not fit the task's or node's state (e.g. finishing a waiting task)."""


@dataclass(frozen=True)
class NodeInfo:
    """One node-worker: its allocation, size and the allocation's end (epoch seconds).
    ``queues``: the worker starts queued tasks only when their cores are free (prefetch)."""

    name: str
    alloc_id: str
    cores: int
    gpus: int = 0
    end_time: float | None = None
    queues: bool = True

    def __post_init__(self) -> None:
        validate.text("name", self.name, "name='job7-n3'")
        validate.text("alloc_id", self.alloc_id, "alloc_id='job7'")
        for field, value, low in (("cores", self.cores, 1), ("gpus", self.gpus, 0)):
            validate.integer(field, value, f"{field}=4", low)
        end = self.end_time
        if end is not None and (isinstance(end, bool) or not isinstance(end, (int, float)) or end != end):
            raise InvalidSpec(f"end_time={end!r} is invalid: give epoch seconds, or None for no end")
        validate.flag("queues", self.queues)


class Assignment(NamedTuple):
    """Run ``task_id`` on ``nodes`` (leader first); ``gpu_ids`` for node-local tasks.
    ``queued``: prefetched onto a full node; it starts when the placer promotes it."""

    task_id: TaskId
    nodes: tuple[str, ...]
    gpu_ids: tuple[str, ...] = ()
    queued: bool = False


@dataclass(frozen=True)
class NodeStatus:
    """A snapshot of one node for tests, the plugin and the CLI."""

    name: str
    alloc_id: str
    cores: int
    free_cores: int
    gpus: int
    free_gpus: tuple[str, ...]
    end_time: float | None
    draining: bool
    reserved_by: TaskId | None
    running: tuple[TaskId, ...]
    queued: tuple[TaskId, ...] = ()


class Task:
    """A task inside the engine (``wt``: its walltime class, see spec.walltime_class)."""

    __slots__ = ("cores", "gpu_ids", "gpus", "id", "k", "near", "nodes", "prio", "res", "seq", "start", "state", "wt")

    def __init__(self, tid: TaskId, res: Resources, prio: int, seq: int, wt: float | None) -> None:
        self.id, self.res, self.prio, self.seq = tid, res, prio, seq
        self.k, self.cores, self.gpus = res.nodes, res.cores, res.gpus
        self.wt = wt
        self.state = WAITING
        self.nodes: list[Node] = []
        self.gpu_ids: tuple[str, ...] = ()
        self.start = 0.0
        self.near: Node | None = None  # a serial task's preferred node (where its inputs are)


class Node:
    """A node inside the engine: its free capacity and who runs, waits, or is kept on it."""

    __slots__ = ("all_gpus", "alloc", "cores", "draining", "end", "est", "est_dirty", "free_cores", "free_gpus",
                 "gang", "gpus", "held", "idx", "key", "name", "queued", "queues", "reserved_by",
                 "running")  # fmt: skip

    def __init__(self, info: NodeInfo, idx: int) -> None:
        self.name, self.idx, self.alloc = info.name, idx, info.alloc_id
        self.cores, self.gpus = info.cores, info.gpus
        self.all_gpus = tuple(str(i) for i in range(info.gpus))
        self.free_cores = info.cores
        self.free_gpus = list(self.all_gpus)
        self.end = INF if info.end_time is None else float(info.end_time)
        self.draining = False
        self.reserved_by: Reservation | None = None
        self.gang: Task | None = None  # the gang holding this whole node
        self.held: Task | None = None  # a starving serial task this node is kept for (holds.py)
        self.running: dict[Task, None] = {}  # serial tasks
        self.queued: deque[Task] = deque()  # prefetched tasks that start when cores free up
        self.queues = info.queues  # the worker gates queued tasks by cores (else none are queued here)
        self.key: Key | None = None  # where the node sits in the free-capacity index
        self.est = 0.0  # estimated end of its running serial tasks (valid unless est_dirty)
        self.est_dirty = False


class Reservation:
    """Nodes of one allocation kept for a waiting gang (gangs.py)."""

    __slots__ = ("alloc_id", "busy", "min_end", "nodes", "promise", "task")

    def __init__(self, task: Task, alloc_id: str) -> None:
        self.task, self.alloc_id = task, alloc_id
        self.nodes: list[Node] = []
        self.busy = 0  # reserved nodes still running something
        self.min_end = INF
        self.promise = INF  # estimated start; backfilled tasks must end by then


class ShapeQueue:
    """Waiting serial tasks of one shape: a FIFO per priority; ``fifo`` is the top one's."""

    __slots__ = ("by_prio", "fifo", "top")

    def __init__(self) -> None:
        self.by_prio: dict[int, deque[Task]] = {}
        self.top = 0
        self.fifo: deque[Task] = deque()

    def push(self, task: Task) -> None:
        fifo = self.by_prio.get(task.prio)
        if fifo is None:
            fifo = self.by_prio[task.prio] = deque()
            if len(self.by_prio) == 1 or task.prio > self.top:
                self.top, self.fifo = task.prio, fifo
        fifo.append(task)

    def next_fifo(self) -> bool:
        """Skip cancelled tasks and empty priorities; False when nothing waits."""
        while self.by_prio:
            fifo = self.by_prio[self.top]
            while fifo and fifo[0].state != WAITING:
                fifo.popleft()
            if fifo:
                self.fifo = fifo
                return True
            del self.by_prio[self.top]
            self.top = max(self.by_prio, default=0)
        self.fifo = deque()
        return False


def order(task: Task) -> tuple[int, int]:
    """Placement order: higher priority first, then arrival."""
    return (-task.prio, task.seq)


def per_alloc(nodes: Iterable[Node]) -> dict[str, int]:
    count: dict[str, int] = {}
    for n in nodes:
        count[n.alloc] = count.get(n.alloc, 0) + 1
    return count
