"""Pure placement core: which task runs on which node-worker, with exact accounting.

Used by the scheduler plugin and by the simulator (``benchmarks/packing_sim.py``); no Dask,
no I/O. A *node* is one node-worker of a batch allocation; a *task* is a
:class:`~balsam_dask.spec.Resources` request with a priority and an arrival order.

Serial tasks (``nodes == 1``) pack beside each other with exact free cores and GPU ids; a
node whose allocation ends before the task's walltime estimate is not eligible; higher
priority goes first, FIFO within a priority, and a task that fits nowhere never blocks a
smaller one behind it. Placement is best fit: the eligible node with the fewest free cores
(then GPUs, then the least remaining time) that fits, so whole nodes stay free for gangs.

Gangs (``nodes == k > 1``) take ``k`` whole nodes of one allocation. Waiting gangs get
*reservations* in priority/FIFO order: the ``k`` nodes of one allocation expected to be idle
soonest take no new tasks and drain; when all are idle the gang starts. The first gang that
cannot be fully reserved becomes the *head*: it keeps its allocation and collects every node
released there (it moves only to an allocation that can take it whole at once), so a wide
gang never starves behind narrower gangs or a stream of serial tasks. Serial tasks use the
nodes nobody reserved.

With ``Placer(backfill=True)`` reserved idle nodes are also lent (EASY backfilling) to
tasks whose walltime estimate ends before the reservation's *promised start*: the time its
busy nodes are estimated to drain (for the head, also when enough other nodes of its
allocation are estimated to be released). A reserved gang then starts no later than
promised as long as estimates are upper bounds. Off by default: reserved nodes take nothing.

``schedule(now)`` is incremental: serial tasks wait in one FIFO per (shape, priority),
walltime estimates are grouped into classes (:func:`walltime_class`), nodes are indexed by
(free cores, free GPUs, usable until), and reservations are recomputed only when nodes,
gangs or reservations changed.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from balsam_dask.errors import BalsamDaskError, InvalidSpec, UnknownTask
from balsam_dask.spec import Resources

TaskId = Hashable
Shape = tuple[int, int, "float | None"]  # (cores per node, GPUs per node, walltime class)
Key = tuple[int, int, float]  # (free cores, free GPUs, usable until)
_INF = math.inf
_WAITING, _RUNNING, _GONE = 1, 2, 3
#: Mantissas of walltime classes: 13 per decade, steps of at most 25%; exact for common
#: limits such as 60, 120, 300, 600, 900, 1800, 3600 and 7200 s.
_MANTISSAS = (1.0, 1.2, 1.5, 1.8, 2.0, 2.4, 3.0, 3.6, 4.5, 5.0, 6.0, 7.2, 9.0, 10.0)


@lru_cache(maxsize=1 << 14)
def walltime_class(walltime: float | None) -> float | None:
    """The estimate rounded up to its class (at most 25% more; round values stay exact).

    Tasks whose estimates share a class share a queue, so a backlog where every task has
    its own estimate still forms a few dozen queues. Eligibility uses the class, so it is
    conservative: a task never lands where its own estimate does not fit.
    """
    if walltime is None:
        return None
    exp = math.floor(math.log10(walltime))
    for e in (exp, exp + 1):  # log10 may round down at a decade edge
        scale = 10.0**e
        for m in _MANTISSAS:
            if m * scale * (1 + 1e-12) >= walltime:
                return max(round(m * scale, 9), walltime)
    return walltime


class PlacementInvariantError(BalsamDaskError):
    """The placer's accounting is inconsistent (a bug, never a user error)."""


class PlacementError(BalsamDaskError, ValueError):
    """A placer call does not fit the task's or node's state (e.g. finishing a waiting task)."""


@dataclass(frozen=True)
class NodeInfo:
    """One node-worker: its allocation, size and the allocation's end (epoch seconds)."""

    name: str
    alloc_id: str
    cores: int
    gpus: int = 0
    end_time: float | None = None

    def __post_init__(self) -> None:
        for field, text in (("name", self.name), ("alloc_id", self.alloc_id)):
            if not isinstance(text, str) or not text:
                raise InvalidSpec(f"{field}={text!r} is invalid: give a non-empty string, e.g. 'job7-n3'")
        for field, value, low in (("cores", self.cores, 1), ("gpus", self.gpus, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidSpec(f"{field}={value!r} is invalid: use an integer >= {low}, e.g. {field}=4")
        end = self.end_time
        if end is not None and (isinstance(end, bool) or not isinstance(end, (int, float)) or end != end):
            raise InvalidSpec(f"end_time={end!r} is invalid: give epoch seconds, or None for no end")


class Assignment(NamedTuple):
    """Run ``task_id`` on ``nodes`` (leader first); ``gpu_ids`` for node-local tasks."""

    task_id: TaskId
    nodes: tuple[str, ...]
    gpu_ids: tuple[str, ...] = ()


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


class _Task:
    __slots__ = ("cores", "gpu_ids", "gpus", "id", "k", "nodes", "prio", "res", "seq", "start", "state", "wt")

    def __init__(self, tid: TaskId, res: Resources, prio: int, seq: int) -> None:
        self.id, self.res, self.prio, self.seq = tid, res, prio, seq
        self.k, self.cores, self.gpus = res.nodes, res.cores, res.gpus
        self.wt: float | None = walltime_class(res.walltime)
        self.state = _WAITING
        self.nodes: list[_Node] = []
        self.gpu_ids: tuple[str, ...] = ()
        self.start = 0.0


class _Node:
    __slots__ = ("all_gpus", "alloc", "cores", "draining", "end", "est", "est_dirty", "free_cores",
                 "free_gpus", "gang", "gpus", "idx", "key", "name", "reserved_by", "running")  # fmt: skip

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
        self.running: dict[_Task, None] = {}  # serial tasks
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


class Placer:
    """Exact, walltime-aware placement of serial tasks and MPI gangs on node-workers."""

    def __init__(self, backfill: bool = False) -> None:
        self._backfill = backfill
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

    # ------------------------------------------------------------------ nodes
    def add_node(self, info: NodeInfo) -> None:
        if info.name in self._nodes:
            raise PlacementError(f"node {info.name!r} is already known; remove_node({info.name!r}) first")
        node = _Node(info, self._seq)
        self._seq += 1
        self._nodes[info.name] = self._by_idx[node.idx] = node
        self._alloc_nodes[node.alloc] = self._alloc_nodes.get(node.alloc, 0) + 1
        self._rekey(node)
        self._version += 1

    def remove_node(self, name: str) -> list[TaskId]:
        """Forget a node; returns the tasks whose attempt was lost (a gang's id once).

        Lost tasks are forgotten: submit them again to retry them."""
        node = self._node(name)
        if node.reserved_by is not None:
            self._release(node.reserved_by)
        lost: list[_Task] = [node.gang] if node.gang is not None else list(node.running)
        for task in lost:
            self._free(task)
            self._drop(task)
        self._set_key(node, None)
        del self._nodes[name], self._by_idx[node.idx]
        if not node.draining:
            self._alloc_dec(node.alloc)
        self._version += 1
        return [t.id for t in lost]

    def set_draining(self, name: str, draining: bool = True) -> None:
        """A draining node takes no new task (its allocation is about to end)."""
        node = self._node(name)
        if node.draining == draining:
            return
        node.draining = draining
        if draining:
            self._alloc_dec(node.alloc)
            if node.reserved_by is not None:
                self._release(node.reserved_by)
        else:
            self._alloc_nodes[node.alloc] = self._alloc_nodes.get(node.alloc, 0) + 1
        self._rekey(node)
        self._version += 1

    # ------------------------------------------------------------------ tasks
    def submit(self, task_id: TaskId, resources: Resources, priority: int = 0) -> None:
        """Queue a task; a task that fits no present node waits (allocations may come)."""
        if not isinstance(resources, Resources):
            raise InvalidSpec(f"resources={resources!r} is invalid: pass balsam_dask.spec.Resources(...)")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidSpec(f"priority={priority!r} is invalid: use an integer, e.g. priority=10")
        if task_id in self._tasks:
            raise PlacementError(f"task {task_id!r} is already submitted; finished() or cancel() it first")
        self._seq += 1
        task = self._tasks[task_id] = _Task(task_id, resources, priority, self._seq)
        if task.k > 1:
            self._gangs[task_id] = task
            self._version += 1
        else:
            shape = (task.cores, task.gpus, task.wt)
            queue = self._queues.get(shape)
            if queue is None:
                queue = self._queues[shape] = _ShapeQueue()
            queue.push(task)
            self._n_serial += 1
            head = (-queue.top, queue.fifo[0].seq)
            if self._head_of.get(shape) != head:
                self._head_of[shape] = head
                heapq.heappush(self._heads, (*head, shape))

    def cancel(self, task_id: TaskId) -> bool:
        """Withdraw a waiting or running task; returns False if the task is unknown."""
        task = self._tasks.get(task_id)
        if task is None:
            return False
        if task.state == _RUNNING:
            self._free(task)
        elif task.k > 1:
            res = self._res.get(task_id)
            if res is not None:
                self._release(res)
            del self._gangs[task_id]
        else:
            self._n_serial -= 1  # its queue entry is skipped later
        self._drop(task)
        return True

    def finished(self, task_id: TaskId) -> None:
        """The running task ended (any outcome): free its cores, GPUs or nodes."""
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTask(f"task {task_id!r} is not known to the placer")
        if task.state != _RUNNING:
            raise PlacementError(f"task {task_id!r} is waiting, not running: use cancel({task_id!r})")
        self._free(task)
        task.state = _GONE
        task.nodes = []
        del self._tasks[task_id]

    # ------------------------------------------------------------------ scheduling
    def schedule(self, now: float) -> list[Assignment]:
        """Place what can start now; returns the new assignments."""
        out: list[Assignment] = []
        if self._gangs:
            if now > self._deadline:  # a reservation's allocation now ends too soon for it
                for res in [r for r in self._res.values() if r.min_end < now + (r.task.wt or 0.0)]:
                    self._release(res)
            if self._version != self._reserved_at:
                self._reserve(now, out)
            if self._ready:
                ready = sorted(self._ready, key=lambda r: _order(r.task))
                self._ready.clear()
                for res in ready:
                    self._start_gang(res, now, out)
        if self._n_serial and self._keys:
            self._schedule_serial(now, out)
        return out

    def _schedule_serial(self, now: float, out: list[Assignment]) -> None:
        queues, keys, buckets, by_idx = self._queues, self._keys, self._buckets, self._by_idx
        heads, head_of = self._heads, self._head_of
        if self._blocked:
            fc, fg = self._grown
            still = []
            for entry in self._blocked:
                if entry[2][0] <= fc and entry[2][1] <= fg:
                    heapq.heappush(heads, entry)
                else:
                    still.append(entry)
            self._blocked = still
        self._grown = (0, 0)
        tried = self._blocked  # shapes that fit nowhere now
        # With many keys, skip whole groups of equal free cores whose latest end is too early:
        # latest end per free-core count, an upper bound while this call only uses capacity.
        group: dict[int, float] | None = None
        at_least: list[float] = []  # latest end among nodes with at least c free cores
        while heads and keys:
            entry = heapq.heappop(heads)
            shape = entry[2]
            if head_of.get(shape) != entry[:2]:
                continue  # stale entry
            sq = queues[shape]
            fifo = sq.fifo
            if (not fifo or fifo[0].state != _WAITING) and not self._next_head(shape, sq):
                continue  # only cancelled tasks were left, or the head changed
            fifo = sq.fifo
            cores, gpus, wt = shape
            need_end = -_INF if wt is None else now + wt
            if group is not None and (cores >= len(at_least) or at_least[cores] < need_end):
                tried.append(entry)
                continue
            while True:
                key = None  # best fit: the first key with enough cores, GPUs and time
                j, n = bisect_left(keys, (cores,)), len(keys)
                steps = 0
                while j < n:  # keys are sorted by (free cores, free GPUs, end): jump sub-groups
                    k = keys[j]
                    if k[1] < gpus:
                        j = bisect_left(keys, (k[0], gpus), j)
                        continue
                    if k[2] >= need_end:
                        key = k
                        break
                    steps += 1
                    if group is None and steps == 8:  # a long scan: build the bounds once
                        group = {}
                        for fc, _, end in keys:
                            if end > group.get(fc, -_INF):
                                group[fc] = end
                        at_least = [-_INF] * (max(group) + 2)
                        for c in range(len(at_least) - 2, -1, -1):
                            at_least[c] = max(at_least[c + 1], group.get(c, -_INF))
                    if group is not None and group.get(k[0], -_INF) < need_end:
                        j = bisect_left(keys, (k[0] + 1,), j)  # no node with k[0] free cores lasts
                    else:
                        j = bisect_left(keys, (k[0], k[1], need_end), j)
                if key is None:  # fits nowhere now; the other shapes still get their turn
                    tried.append((-sq.top, fifo[0].seq, shape))
                    break
                task = fifo.popleft()
                bucket = buckets[key]
                node = by_idx[bucket.pop()]
                if not bucket:
                    del buckets[key], keys[bisect_left(keys, key)]
                node.key = None
                node.free_cores -= cores
                ids: tuple[str, ...] = ()
                if gpus:
                    ids = tuple(node.free_gpus[:gpus])
                    del node.free_gpus[:gpus]
                if not node.running and node.reserved_by is not None:
                    node.reserved_by.busy += 1  # backfilled onto a reserved node
                node.running[task] = None
                if wt is None:
                    node.est = _INF
                elif now + wt > node.est and not node.est_dirty:
                    node.est = now + wt
                task.state, task.nodes, task.gpu_ids, task.start = _RUNNING, [node], ids, now
                self._n_serial -= 1
                if node.free_cores > 0:  # back into the index under its new free capacity
                    res = node.reserved_by  # not None only when backfilling: end by the promise
                    end = node.end if res is None else min(node.end, res.promise)
                    if res is None or res.promise < _INF:
                        nk = (node.free_cores, len(node.free_gpus), end)
                        bucket = buckets.get(nk)  # type: ignore[assignment]
                        if bucket is None:
                            bucket = buckets[nk] = set()
                            insort(keys, nk)
                        bucket.add(node.idx)
                        node.key = nk
                        if group is not None and end > group.get(nk[0], -_INF):
                            group[nk[0]] = end
                out.append(Assignment(task.id, (node.name,), ids))
                if (not fifo or fifo[0].state != _WAITING) and not self._next_head(shape, sq):
                    break
                fifo = sq.fifo
                head = (-sq.top, fifo[0].seq)
                head_of[shape] = head
                if not keys or (heads and head > heads[0][:2]):
                    heapq.heappush(heads, (*head, shape))
                    break

    def _next_head(self, shape: Shape, sq: _ShapeQueue) -> bool:
        """The shape's head was taken or cancelled: queue its next task (False if none)."""
        if not sq.next_fifo():
            del self._queues[shape], self._head_of[shape]
            return False
        head = (-sq.top, sq.fifo[0].seq)
        if self._head_of.get(shape) != head:
            self._head_of[shape] = head
            heapq.heappush(self._heads, (*head, shape))
            return False  # it waits for its turn in the heap
        return True

    def _reserve(self, now: float, out: list[Assignment]) -> None:
        """Reserve nodes for waiting gangs in priority order; extend the head; backfill."""
        self._reserved_at = self._version
        pool: dict[str, list[_Node]] = {}  # nodes free for reservation, per allocation
        for node in self._nodes.values():
            if node.reserved_by is None and node.gang is None and not node.draining:
                pool.setdefault(node.alloc, []).append(node)
        head = self._head
        if head is not None:
            need = now + (head.task.wt or 0.0)
            elsewhere = any(
                a != head.alloc_id and sum(1 for n in nodes if n.end >= need) >= head.task.k
                for a, nodes in pool.items()
            )
            if elsewhere or self._timely_width(head.task, now).get(head.alloc_id, 0) < head.task.k:
                # another allocation can take it whole now, or its own shrank or ends too soon
                for node in head.nodes:
                    if node.gang is None:
                        pool.setdefault(node.alloc, []).append(node)
                self._release(head)
            else:
                self._extend(head, pool, now)
        failed: list[_Task] = []
        misses: list[tuple[int, float]] = []  # (k, need) that found no nodes: wider/longer fail too
        widest: dict[float, tuple[int, dict[str, int]]] = {}  # per need: allocations wide enough
        most = max(map(len, pool.values()), default=0)  # pools only shrink during the pass
        for task in sorted(self._gangs.values(), key=_order):
            if task.id in self._res:
                continue
            need = now + (task.wt or 0.0)
            hopeless = task.k > most or any(k <= task.k and n <= need for k, n in misses)
            best: tuple[tuple[float, int, str], str, list[_Node]] | None = None
            for alloc, nodes in () if hopeless else pool.items():
                eligible = [n for n in nodes if n.end >= need] if len(nodes) >= task.k else ()
                if len(eligible) >= task.k:
                    chosen = heapq.nsmallest(task.k, eligible, key=lambda n: self._drain_key(n, now))
                    score = (self._drain_time(chosen[-1], now), sum(n.cores - n.free_cores for n in chosen), alloc)
                    if best is None or score < best[0]:
                        best = (score, alloc, chosen)
            if best is not None:
                res = self._res[task.id] = _Reservation(task, best[1])
                self._take(res, best[2], pool[best[1]], now)
                most = max(map(len, pool.values()), default=0)
                continue
            failed.append(task)
            if not hopeless:
                misses.append((task.k, need))
            if self._head is None:
                # The oldest gang that cannot be reserved now keeps an allocation where it fits
                # and collects its nodes as they are released.
                if need not in widest:
                    w = self._timely_width(task, now)
                    widest[need] = (max(w.values(), default=0), w)
                if widest[need][0] >= task.k:
                    fits = sorted(a for a, n in widest[need][1].items() if n >= task.k)
                    alloc = max(fits, key=lambda a: sum(1 for n in pool.get(a, []) if n.end >= need))
                    self._head = self._res[task.id] = _Reservation(task, alloc)
                    self._extend(self._head, pool, now)
                    most = max(map(len, pool.values()), default=0)
        if self._backfill and failed:
            idle: dict[str, list[_Node]] = {}  # idle nodes a gang could borrow, per allocation
            for node in self._nodes.values():
                r = node.reserved_by
                lend = r is None or (r.promise < _INF and r not in self._ready)
                if not node.running and node.gang is None and not node.draining and lend:
                    idle.setdefault(node.alloc, []).append(node)
            tried: list[tuple[int, float]] = []
            for task in failed:
                end = now + (task.wt or _INF)
                most = max(map(len, idle.values()), default=0)
                if task.id in self._res or task.k > most or any(k <= task.k and e <= end for k, e in tried):
                    continue
                if not self._backfill_gang(task, idle, end, now, out):
                    tried.append((task.k, end))
        self._deadline = min((r.min_end - (r.task.wt or 0.0) for r in self._res.values() if r.nodes), default=_INF)

    def _extend(self, res: _Reservation, pool: dict[str, list[_Node]], now: float) -> None:
        need = now + (res.task.wt or 0.0)
        nodes = pool.get(res.alloc_id, [])
        eligible = [n for n in nodes if n.end >= need]
        chosen = heapq.nsmallest(res.task.k - len(res.nodes), eligible, key=lambda n: self._drain_key(n, now))
        self._take(res, chosen, nodes, now)
        if len(res.nodes) < res.task.k and self._backfill:  # promise: own drain, others' release
            times = []
            for n in self._nodes.values():
                if n.alloc == res.alloc_id and n.reserved_by is not res and not n.draining and n.end >= need:
                    r = n.reserved_by
                    if r is not None:
                        times.append(r.promise + (r.task.wt or _INF) if len(r.nodes) == r.task.k else _INF)
                    else:
                        times.append(self._drain_time(n, now))
            missing = res.task.k - len(res.nodes)
            later = heapq.nsmallest(missing, times)[-1] if len(times) >= missing else _INF
            own = max((self._drain_time(n, now) for n in res.nodes), default=now)
            self._promise(res, max(own, later))

    def _take(self, res: _Reservation, chosen: list[_Node], pool_list: list[_Node], now: float) -> None:
        if chosen:
            picked = set(chosen)
            pool_list[:] = [n for n in pool_list if n not in picked]
        for node in chosen:
            node.reserved_by = res
            res.nodes.append(node)
            res.min_end = min(res.min_end, node.end)
            if node.running or node.gang is not None:
                res.busy += 1
            self._set_key(node, None)
        if len(res.nodes) == res.task.k:
            if self._head is res:
                self._head = None
            if res.busy == 0:
                self._ready.add(res)
            elif self._backfill:
                self._promise(res, max(self._drain_time(n, now) for n in res.nodes))

    def _promise(self, res: _Reservation, when: float) -> None:
        res.promise = when
        for node in res.nodes:
            self._rekey(node)

    def _backfill_gang(
        self, task: _Task, idle: dict[str, list[_Node]], end: float, now: float, out: list[Assignment]
    ) -> bool:
        """Start a gang at once on idle nodes, borrowing reserved ones it hands back in time."""
        for alloc in sorted(idle):
            usable = [
                n for n in idle[alloc]
                if n.end >= end and (n.reserved_by is None or n.reserved_by.promise >= end)
            ]  # fmt: skip
            if len(usable) < task.k:
                continue
            chosen = sorted(usable, key=lambda n: (n.reserved_by is None, n.name))[: task.k]
            picked = set(chosen)
            idle[alloc] = [n for n in idle[alloc] if n not in picked]
            for node in chosen:
                if node.reserved_by is not None:
                    node.reserved_by.busy += 1
            del self._gangs[task.id]
            self._run_gang(task, chosen, now, out)
            return True
        return False

    def _start_gang(self, res: _Reservation, now: float, out: list[Assignment]) -> None:
        task = res.task
        if res.busy or self._res.get(task.id) is not res:
            return  # a node was lent again meanwhile, or the reservation is gone
        if res.min_end < now + (task.wt or 0.0):
            self._release(res)
            return
        del self._res[task.id], self._gangs[task.id]
        for node in res.nodes:
            node.reserved_by = None
        self._run_gang(task, res.nodes, now, out)

    def _run_gang(self, task: _Task, nodes: list[_Node], now: float, out: list[Assignment]) -> None:
        nodes = sorted(nodes, key=lambda n: n.name)
        for node in nodes:
            node.gang = task
            node.free_cores = 0
            node.free_gpus = []
            self._set_key(node, None)
        task.state, task.nodes, task.start = _RUNNING, nodes, now
        out.append(Assignment(task.id, tuple(n.name for n in nodes)))

    def _timely_width(self, task: _Task, now: float) -> dict[str, int]:
        """Per allocation: nodes taking tasks whose allocation lasts long enough for the gang."""
        need = now + (task.wt or 0.0)
        return _per_alloc(n for n in self._nodes.values() if not n.draining and n.end >= need)

    def _drain_time(self, node: _Node, now: float) -> float:
        """When the node is expected to be idle (infinite if a running task has no estimate)."""
        if node.gang is not None:
            return node.gang.start + node.gang.wt if node.gang.wt is not None else _INF
        if not node.running:
            return now
        if node.est_dirty:
            node.est = max((t.start + t.wt if t.wt is not None else _INF for t in node.running), default=0.0)
            node.est_dirty = False
        return max(node.est, now)

    def _drain_key(self, node: _Node, now: float) -> tuple[float, int, str]:
        """Nodes expected to be idle soonest first, then fewest running cores, then name."""
        return (self._drain_time(node, now), node.cores - node.free_cores, node.name)

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

    # ------------------------------------------------------------------ freeing
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
        if not node.running:
            self._idle(node)
        elif node.reserved_by is None and not node.draining:  # the common case, inlined _rekey
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
        if node.draining or node.gang is not None or node.free_cores <= 0:
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

    # ------------------------------------------------------------------ introspection
    def _node(self, name: str) -> _Node:
        node = self._nodes.get(name)
        if node is None:
            raise PlacementError(f"unknown node {name!r}; add_node(NodeInfo({name!r}, ...)) first")
        return node

    def node(self, name: str) -> NodeStatus:
        n = self._node(name)
        running = (n.gang.id,) if n.gang is not None else tuple(t.id for t in n.running)
        reserved = n.reserved_by.task.id if n.reserved_by is not None else None
        end = None if n.end == _INF else n.end
        return NodeStatus(n.name, n.alloc, n.cores, n.free_cores, n.gpus, tuple(n.free_gpus), end,
                          n.draining, reserved, running)  # fmt: skip

    def nodes(self) -> list[str]:
        return list(self._nodes)

    def waiting(self) -> list[TaskId]:
        """Waiting task ids in priority, then arrival, order."""
        return [t.id for t in sorted((t for t in self._tasks.values() if t.state == _WAITING), key=_order)]

    def running(self) -> dict[TaskId, Assignment]:
        tasks = (t for t in self._tasks.values() if t.state == _RUNNING)
        return {t.id: Assignment(t.id, tuple(n.name for n in t.nodes), t.gpu_ids) for t in tasks}

    def reservations(self) -> dict[TaskId, tuple[str, ...]]:
        """Gangs holding reserved nodes (some of them may still be draining)."""
        return {tid: tuple(n.name for n in r.nodes) for tid, r in self._res.items()}

    def state(self, task_id: TaskId) -> str | None:
        """'waiting', 'running' or None (unknown, finished, cancelled or lost)."""
        task = self._tasks.get(task_id)
        return None if task is None else ("running" if task.state == _RUNNING else "waiting")

    def backlog_counts(self) -> dict[tuple[int, int, int, float | None], tuple[int, int]]:
        """(nodes, cores, gpus, walltime class) -> (waiting, running), for the sizing policy."""
        out: dict[tuple[int, int, int, float | None], tuple[int, int]] = {}
        for t in self._tasks.values():
            w, r = out.get((t.k, t.cores, t.gpus, t.wt), (0, 0))
            out[(t.k, t.cores, t.gpus, t.wt)] = (w + 1, r) if t.state == _WAITING else (w, r + 1)
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
        if task.state == _RUNNING:
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

    def check_invariants(self) -> None:
        """Raise :class:`PlacementInvariantError` if any accounting is inconsistent."""

        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise PlacementInvariantError(msg)

        holders: dict[str, _Task] = {}
        for name, n in self._nodes.items():
            check(n.name == name and self._by_idx.get(n.idx) is n, f"node {name!r} indexed wrongly")
            check(0 <= n.free_cores <= n.cores, f"node {name!r} has {n.free_cores} free of {n.cores} cores")
            check(n.key == self._want(n), f"node {name!r} index key {n.key} is not {self._want(n)}")
            check(n.key is None or n.idx in self._buckets.get(n.key, ()), f"node {name!r} not in its bucket")
            r = n.reserved_by
            check(r is None or (self._res.get(r.task.id) is r and n in r.nodes), f"node {name!r} bad reservation")
            if n.gang is not None:
                g = n.gang
                check(not n.running and not n.free_cores and not n.free_gpus, f"gang node {name!r} shared")
                check(g.state == _RUNNING and n in g.nodes, f"node {name!r} names gang {g.id!r} not on it")
                continue
            check(sum(t.cores for t in n.running) + n.free_cores == n.cores, f"node {name!r} cores mismatch")
            ids = sorted([g for t in n.running for g in t.gpu_ids] + n.free_gpus)
            check(ids == sorted(n.all_gpus), f"node {name!r}: GPU ids {ids} are not {n.all_gpus} once each")
            for t in n.running:
                ok = t.state == _RUNNING and t.nodes == [n] and self._tasks.get(t.id) is t
                check(ok, f"node {name!r} lists task {t.id!r} that does not run there")
        for t in self._tasks.values():
            if t.state != _RUNNING or t.k == 1:
                continue
            check(len(t.nodes) == t.k and len({n.alloc for n in t.nodes}) == 1, f"gang {t.id!r} nodes wrong")
            for n in t.nodes:
                check(holders.setdefault(n.name, t) is t, f"node {n.name!r} is held by two gangs")
                check(self._nodes.get(n.name) is n and n.gang is t, f"gang {t.id!r} on a node it lacks")
        for tid, r in self._res.items():
            check(r.task.state == _WAITING and self._gangs.get(tid) is r.task, f"reservation {tid!r} stale")
            check(len(r.nodes) <= r.task.k, f"reservation {tid!r} holds more than {r.task.k} nodes")
            check(all(n.alloc == r.alloc_id and n.reserved_by is r for n in r.nodes), f"reservation {tid!r}")
            busy = sum(1 for n in r.nodes if n.running or n.gang is not None)
            check(r.busy == busy, f"reservation {tid!r} counts {r.busy} busy nodes, not {busy}")
        check(
            sum(self._alloc_nodes.values()) == sum(1 for n in self._nodes.values() if not n.draining),
            "per-allocation node counts do not add up",
        )
        check(
            len(self._keys) == len(self._buckets) == len(set(self._keys))
            and sum(len(b) for b in self._buckets.values()) == sum(1 for n in self._nodes.values() if n.key),
            "the free-capacity index does not match the nodes",
        )
        check(self._n_serial == sum(1 for t in self._tasks.values() if t.k == 1 and t.state == _WAITING),
              "waiting serial count is wrong")  # fmt: skip
