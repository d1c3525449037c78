"""Bookkeeping of the placement core: task, node and reservation records and their index.

Internal to :mod:`balsam_dask.packing.placement`, whose :class:`~balsam_dask.packing.placement.Placer`
builds on :class:`_PlacerState`: the records (:class:`_Task`, :class:`_Node`, :class:`_Reservation`),
the per-(shape, priority) FIFOs of waiting serial tasks (:class:`_ShapeQueue`), the free-capacity
index of nodes by (free cores, free GPUs, usable until), freeing a task's cores, GPUs or nodes,
and the read-only queries over this state. No Dask, no I/O.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

from balsam_dask.errors import InvalidSpec, UnknownTask
from balsam_dask.spec import Resources

if TYPE_CHECKING:
    from balsam_dask.packing.placement import NodeInfo

TaskId = Hashable
Shape = tuple[int, int, "float | None"]  # (cores per node, GPUs per node, walltime class)
Key = tuple[int, int, float]  # (free cores, free GPUs, usable until)
_INF = math.inf
_WAITING, _RUNNING, _GONE, _QUEUED = 1, 2, 3, 4  # _QUEUED: prefetched on a full node (placement_prefetch)
#: Seconds a blocked serial head may be passed by later tasks before a node is held for it
#: (``placement_holds``); ``Placer(hold_after=None)`` never holds.
HOLD_AFTER = 30.0


class _Task:
    __slots__ = ("cores", "gpu_ids", "gpus", "id", "k", "nodes", "prio", "res", "seq", "start", "state", "wt")

    def __init__(self, tid: TaskId, res: Resources, prio: int, seq: int, wt: float | None) -> None:
        self.id, self.res, self.prio, self.seq = tid, res, prio, seq
        self.k, self.cores, self.gpus = res.nodes, res.cores, res.gpus
        self.wt = wt  # walltime_class(res.walltime), computed by Placer.submit
        self.state = _WAITING
        self.nodes: list[_Node] = []
        self.gpu_ids: tuple[str, ...] = ()
        self.start = 0.0


class _Node:
    __slots__ = ("all_gpus", "alloc", "cores", "draining", "end", "est", "est_dirty", "free_cores", "free_gpus",
                 "gang", "gpus", "held", "idx", "key", "name", "queued", "queues", "reserved_by",
                 "running")  # fmt: skip

    def __init__(self, info: NodeInfo, idx: int) -> None:
        self.name, self.idx, self.alloc = info.name, idx, info.alloc_id
        self.cores, self.gpus = info.cores, info.gpus
        self.all_gpus = tuple(str(i) for i in range(info.gpus))
        self.free_cores = info.cores
        self.free_gpus = list(self.all_gpus)
        self.end = _INF if info.end_time is None else float(info.end_time)
        self.draining = False
        self.reserved_by: _Reservation | None = None
        self.gang: _Task | None = None  # the gang holding this whole node
        self.held: _Task | None = None  # a starving serial task this node is kept for (placement_holds)
        self.running: dict[_Task, None] = {}  # serial tasks
        self.queued: deque[_Task] = deque()  # prefetched tasks that start when cores free up
        self.queues = info.queues  # the worker gates queued tasks by cores (else none are queued here)
        self.key: Key | None = None  # where the node sits in the free-capacity index
        self.est = 0.0  # estimated end of its running serial tasks (valid unless est_dirty)
        self.est_dirty = False


class _Reservation:
    __slots__ = ("alloc_id", "busy", "min_end", "nodes", "promise", "task")

    def __init__(self, task: _Task, alloc_id: str) -> None:
        self.task, self.alloc_id = task, alloc_id
        self.nodes: list[_Node] = []
        self.busy = 0  # reserved nodes still running something
        self.min_end = _INF
        self.promise = _INF  # estimated start; backfilled tasks must end by then


class _ShapeQueue:
    """Waiting serial tasks of one shape: a FIFO per priority; ``fifo`` is the top one's."""

    __slots__ = ("by_prio", "fifo", "top")

    def __init__(self) -> None:
        self.by_prio: dict[int, deque[_Task]] = {}
        self.top = 0
        self.fifo: deque[_Task] = deque()

    def push(self, task: _Task) -> None:
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
            while fifo and fifo[0].state != _WAITING:
                fifo.popleft()
            if fifo:
                self.fifo = fifo
                return True
            del self.by_prio[self.top]
            self.top = max(self.by_prio, default=0)
        self.fifo = deque()
        return False


def _order(task: _Task) -> tuple[int, int]:
    return (-task.prio, task.seq)


def _per_alloc(nodes: Iterable[_Node]) -> dict[str, int]:
    count: dict[str, int] = {}
    for n in nodes:
        count[n.alloc] = count.get(n.alloc, 0) + 1
    return count


class _PlacerState:
    """The placer's state, its free-capacity index, freeing and read-only queries."""

    def __init__(self, backfill: bool = False, hold_after: float | None = HOLD_AFTER, prefetch: int = 0) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise InvalidSpec(f"prefetch={prefetch!r} is invalid: use an integer >= 0 (tasks queued per node), e.g. 2")
        if hold_after is not None and (isinstance(hold_after, bool) or not isinstance(hold_after, (int, float))
                                       or hold_after < 0):  # fmt: skip
            raise InvalidSpec(f"hold_after={hold_after!r} is invalid: use seconds >= 0 or None, e.g. hold_after=30")
        self._backfill = backfill
        self._hold_after = hold_after
        self._holds: dict[TaskId, _Node] = {}  # held serial task -> its node
        self._hold_ready: list[_Node] = []  # held nodes whose task now fits
        self._passed_since: dict[TaskId, float] = {}  # blocked heads: since when later tasks pass them
        self._nodes: dict[str, _Node] = {}
        self._by_idx: dict[int, _Node] = {}
        self._alloc_nodes: dict[str, int] = {}  # non-draining nodes per allocation
        self._tasks: dict[TaskId, _Task] = {}
        self._seq = 0
        self._queues: dict[Shape, _ShapeQueue] = {}
        self._n_serial = 0  # waiting serial tasks
        # shapes by their next task's (-priority, seq); entries not matching _head_of are stale
        self._heads: list[tuple[int, int, Shape]] = []
        self._head_of: dict[Shape, tuple[int, int]] = {}
        # Shapes that fit nowhere at the last call wait here until some node's free capacity
        # grows to fit them (time only ever makes nodes less eligible).
        self._blocked: list[tuple[int, int, Shape]] = []
        self._grown = (0, 0)  # the most free (cores, GPUs) any node gained since the last call
        self._gangs: dict[TaskId, _Task] = {}  # waiting gangs (with or without reservation)
        self._res: dict[TaskId, _Reservation] = {}
        self._head: _Reservation | None = None
        self._ready: set[_Reservation] = set()
        self._version = 0  # bumped whenever reservations may change
        self._reserved_at = -1
        self._deadline = _INF  # earliest time a reservation's allocation may become too short
        self._buckets: dict[Key, set[int]] = {}
        self._keys: list[Key] = []  # sorted keys of non-empty buckets
        # prefetch (placement_prefetch): queued tasks per full node, at most _prefetch each
        self._prefetch = prefetch
        self._n_queued = 0
        self._queued_on: set[_Node] = set()  # nodes that may have queued tasks
        self._refill: dict[_Node, None] = {}  # full nodes that may take queued tasks (ordered set)
        self._started: list[TaskId] = []  # queued tasks promoted to running (take_started)
        self._stealing: set[TaskId] = set()  # queued tasks being taken back
        self._steals: list[tuple[TaskId, str]] = []  # (task, node) to take back (take_steals)
        self._review = False  # queued tasks may have to go back (node blocked, higher priority waits)
        self._queued_min_prio = _INF  # a lower bound of the queued tasks' priorities

    # ------------------------------------------------------------------ freeing
    def _release(self, res: _Reservation) -> None:
        """Give the reserved nodes back; the gang waits again."""
        self._res.pop(res.task.id, None)
        self._ready.discard(res)
        if self._head is res:
            self._head = None
        for node in res.nodes:
            node.reserved_by = None
            self._rekey(node)
        res.nodes = []
        self._version += 1

    def _free(self, task: _Task) -> None:
        if task.k > 1:
            for node in task.nodes:
                node.gang = None
                node.free_cores, node.free_gpus = node.cores, list(node.all_gpus)
                self._idle(node)
            self._version += 1
            return
        node = task.nodes[0]
        del node.running[task]
        node.free_cores += task.cores
        if task.gpu_ids:
            node.free_gpus.extend(task.gpu_ids)
            node.free_gpus.sort(key=int)
        node.est_dirty = True
        if node.queued:
            self._promote(node)  # the worker starts them now: so does the placer
        if not node.running:
            self._idle(node)
        elif node.free_cores and node.reserved_by is None and not node.draining and node.held is None:  # inlined _rekey
            key = (node.free_cores, len(node.free_gpus), node.end)
            if node.key is not None:
                bucket = self._buckets[node.key]
                bucket.discard(node.idx)
                if not bucket:
                    del self._buckets[node.key], self._keys[bisect_left(self._keys, node.key)]
            bucket = self._buckets.get(key)  # type: ignore[assignment]
            if bucket is None:
                bucket = self._buckets[key] = set()
                insort(self._keys, key)
            bucket.add(node.idx)
            node.key = key
            if key[0] > self._grown[0] or key[1] > self._grown[1]:
                self._grown = (max(key[0], self._grown[0]), max(key[1], self._grown[1]))
        else:
            self._rekey(node)
        if node.held is not None:
            self._check_hold(node)

    def _promote(self, node: _Node) -> None:
        """Cores were freed on ``node``: its queued tasks (placement_prefetch) that fit now run, in
        queue order, as the worker starts them."""
        q = node.queued
        while q and q[0].cores <= node.free_cores:
            task = q.popleft()
            node.free_cores -= task.cores
            node.running[task] = None
            task.state = _RUNNING
            self._n_queued -= 1
            self._stealing.discard(task.id)
            self._started.append(task.id)
        node.est_dirty = True
        if self._prefetch and not node.free_cores and len(q) < self._prefetch:
            self._refill[node] = None

    def _check_hold(self, node: _Node) -> None:
        """A held node's free capacity grew: its task may start at the next schedule()."""
        task = node.held
        if task is not None and node.free_cores >= task.cores and len(node.free_gpus) >= task.gpus:
            self._hold_ready.append(node)

    def _idle(self, node: _Node) -> None:
        """The node runs nothing any more: a reservation waiting for it may be complete."""
        node.est, node.est_dirty = 0.0, False
        res = node.reserved_by
        if res is not None:
            res.busy -= 1
            if res.busy == 0 and len(res.nodes) == res.task.k:
                self._ready.add(res)
        self._rekey(node)

    def _drop(self, task: _Task) -> None:
        task.state = _GONE
        task.nodes = []
        del self._tasks[task.id]

    def _alloc_dec(self, alloc: str) -> None:
        left = self._alloc_nodes.get(alloc, 0) - 1
        if left > 0:
            self._alloc_nodes[alloc] = left
        else:
            self._alloc_nodes.pop(alloc, None)

    # ------------------------------------------------------------------ index
    def _want(self, node: _Node) -> Key | None:
        """The index key a node should have: None if it must take no serial task now."""
        if node.draining or node.gang is not None or node.held is not None or node.free_cores <= 0:
            return None
        end = node.end
        if node.reserved_by is not None:
            if not self._backfill or node.reserved_by.promise == _INF:
                return None
            end = min(end, node.reserved_by.promise)
        return (node.free_cores, len(node.free_gpus), end)

    def _rekey(self, node: _Node) -> None:
        key = self._want(node)
        if key != node.key:
            self._set_key(node, key)

    def _set_key(self, node: _Node, key: Key | None) -> None:
        old = node.key
        if old is not None:
            bucket = self._buckets[old]
            bucket.discard(node.idx)
            if not bucket:
                del self._buckets[old], self._keys[bisect_left(self._keys, old)]
        if key is not None:
            bucket = self._buckets.get(key)  # type: ignore[assignment]
            if bucket is None:
                bucket = self._buckets[key] = set()
                insort(self._keys, key)
            bucket.add(node.idx)
            self._grown = (max(key[0], self._grown[0]), max(key[1], self._grown[1]))
        node.key = key

    # ------------------------------------------------------------------ queries
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def releasable(self, name: str) -> bool:
        """Nothing runs or waits on the node and no gang or starving task is kept for it:
        giving it back to the batch system loses nothing."""
        n = self._nodes.get(name)
        return (
            n is not None and n.gang is None and not n.running and not n.queued
            and n.reserved_by is None and n.held is None
        )  # fmt: skip

    def waiting(self) -> list[TaskId]:
        """Waiting task ids in priority, then arrival, order."""
        return [t.id for t in sorted((t for t in self._tasks.values() if t.state == _WAITING), key=_order)]

    def reservations(self) -> dict[TaskId, tuple[str, ...]]:
        """Gangs holding reserved nodes (some of them may still be draining)."""
        return {tid: tuple(n.name for n in r.nodes) for tid, r in self._res.items()}

    def state(self, task_id: TaskId) -> str | None:
        """'waiting', 'queued' (prefetched on a node), 'running' or None (unknown, finished, cancelled or lost)."""
        task = self._tasks.get(task_id)
        return None if task is None else {_RUNNING: "running", _QUEUED: "queued"}.get(task.state, "waiting")

    def backlog_counts(self) -> dict[tuple[int, int, int, float | None], tuple[int, int]]:
        """(nodes, cores, gpus, walltime class) -> (waiting, running), for the sizing policy."""
        out: dict[tuple[int, int, int, float | None], tuple[int, int]] = {}
        for t in self._tasks.values():
            w, r = out.get((t.k, t.cores, t.gpus, t.wt), (0, 0))
            out[(t.k, t.cores, t.gpus, t.wt)] = (w, r + 1) if t.state == _RUNNING else (w + 1, r)
        return out

    def max_gang_width(self) -> int:
        """Nodes of the largest allocation (draining nodes excluded): the widest runnable gang."""
        return max(self._alloc_nodes.values(), default=0)

    def unplaceable(self, task_id: TaskId, now: float | None = None) -> str | None:
        """Why a waiting task cannot run on the present nodes, or None if it can (now or later).

        Sizes are always checked; remaining allocation time too when ``now`` is given. New
        allocations may still come, so this is advice for the user, never a reason to fail.
        """
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTask(f"task {task_id!r} is not known to the placer")
        nodes = [n for n in self._nodes.values() if not n.draining]
        if task.state in (_RUNNING, _QUEUED):
            return None
        if not nodes:
            return "no node-workers are connected yet"
        fit = [n for n in nodes if n.cores >= task.cores and n.gpus >= task.gpus]
        if not fit:
            big = max(nodes, key=lambda n: (n.cores, n.gpus))
            return (f"needs {task.cores} cores and {task.gpus} GPUs per node; the largest node has "
                    f"{big.cores} cores and {big.gpus} GPUs")  # fmt: skip
        widest = max(_per_alloc(fit).values())
        if widest < task.k:
            return f"needs {task.k} nodes of one allocation; the widest allocation has {widest}"
        if now is not None and task.wt is not None:
            timely = _per_alloc(n for n in fit if n.end >= now + task.wt)
            if max(timely.values(), default=0) < task.k:
                left = max(max(n.end for n in fit) - now, 0.0)
                return (f"needs walltime {task.wt:g} s on {task.k} node(s) of one allocation; "
                        f"the longest remaining allocation time is {left:g} s")  # fmt: skip
        return None
