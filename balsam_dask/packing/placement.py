"""Pure placement core: which task runs on which node-worker, with exact accounting.

Used by the scheduler plugin and by the simulator (``benchmarks/packing_sim.py``); no Dask,
no I/O. A *node* is one node-worker of a batch allocation; a *task* is a
:class:`~balsam_dask.spec.Resources` request with a priority and an arrival order.

Serial tasks (``nodes == 1``) pack beside each other with exact free cores and GPU ids; a
node whose allocation ends before the task's walltime estimate is not eligible; higher
priority goes first, FIFO within a priority, and a task that fits nowhere does not block a
smaller one behind it; but once such later tasks have passed it for ``hold_after`` seconds
(default 30), one node is *held* for it: that node takes no new task until the passed task
fits there, so a wide serial task never starves behind a stream of narrow ones. Placement
is best fit: the eligible node with the fewest free cores (then GPUs, then the least
remaining time) that fits, so whole nodes stay free for gangs.

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

The code lives in four modules: this one (the public records, :func:`walltime_class`, and
:class:`Placer`'s task and node API, serial placement and invariant checks), ``placement_state``
(task, node and reservation records, the free-capacity index, freeing, queries),
``placement_gangs`` (gang reservations and backfilling) and ``placement_holds`` (held nodes for
passed serial tasks). Every name stays importable from here.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections import deque as deque  # the `as` imports re-export names this module had before the split
from collections.abc import Hashable as Hashable
from collections.abc import Iterable as Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from balsam_dask.errors import BalsamDaskError, InvalidSpec, UnknownTask
from balsam_dask.packing.placement_gangs import _GangReservations
from balsam_dask.packing.placement_holds import _SerialHolds
from balsam_dask.packing.placement_prefetch import _Prefetch
from balsam_dask.packing.placement_state import (
    _GONE,
    _INF,
    _QUEUED,
    _RUNNING,
    _WAITING,
    Shape,
    TaskId,
    _Node,
    _order,
    _ShapeQueue,
    _Task,
)
from balsam_dask.packing.placement_state import Key as Key
from balsam_dask.packing.placement_state import _per_alloc as _per_alloc
from balsam_dask.packing.placement_state import _Reservation as _Reservation
from balsam_dask.spec import Resources

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
    """One node-worker: its allocation, size and the allocation's end (epoch seconds).
    ``queues``: the worker starts queued tasks only when their cores are free (prefetch)."""

    name: str
    alloc_id: str
    cores: int
    gpus: int = 0
    end_time: float | None = None
    queues: bool = True

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
        if not isinstance(self.queues, bool):
            raise InvalidSpec(f"queues={self.queues!r} is invalid: give True or False")


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


class Placer(_GangReservations, _SerialHolds, _Prefetch):
    """Exact, walltime-aware placement of serial tasks and MPI gangs on node-workers."""

    # __init__(backfill=False), the index, freeing and the queries: placement_state._PlacerState;
    # gang reservations and backfilling: placement_gangs._GangReservations.

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
        if node.held is not None:
            self._holds.pop(node.held.id, None)
            node.held = None
        for task in node.queued:  # never started: its worker hands it back to be placed again
            self._stealing.discard(task.id)
            self._drop(task)
        self._n_queued -= len(node.queued)
        node.queued.clear()
        self._queued_on.discard(node)
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
            self._review = bool(node.queued)
            self._alloc_dec(node.alloc)
            if node.reserved_by is not None:
                self._release(node.reserved_by)
            self._unhold(node)
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
        task = self._tasks[task_id] = _Task(task_id, resources, priority, self._seq, walltime_class(resources.walltime))
        if self._n_queued and priority > self._queued_min_prio:
            self._review = True  # queued tasks of lower priority go back: this one runs first
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
        elif task.state == _QUEUED:
            node = task.nodes[0]
            node.queued.remove(task)
            self._n_queued -= 1
            self._stealing.discard(task_id)
            if self._prefetch and not node.free_cores:
                self._refill[node] = None
        elif task.k > 1:
            res = self._res.get(task_id)
            if res is not None:
                self._release(res)
            del self._gangs[task_id]
        else:
            self._n_serial -= 1  # its queue entry is skipped later
            self._forget_hold(task_id)
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
        if self._hold_ready:
            self._start_held(now, out)
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
        if self._n_serial and self._keys and self._schedule_serial(now, out) and self._n_serial and self._keys:
            self._schedule_serial(now, out)  # nodes held for tasks that started elsewhere take tasks again
        if self._passed_since and self._hold_after is not None:
            self._hold_starving(now)
            if self._hold_ready:
                self._start_held(now, out)
        if self._refill:
            self._prefetch_pass(now, out)
        if self._n_queued and (self._review or self._gangs or self._holds
                               or (self._keys and self._n_serial <= len(self._nodes))):  # fmt: skip
            self._review = False
            self._review_queues(now)
        return out

    def _schedule_serial(self, now: float, out: list[Assignment]) -> bool:
        """Place waiting serial tasks; True when nodes held for tasks that started elsewhere
        were freed (a second pass may use them)."""
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
        worst = (-(1 << 62), 0)  # the last in order of the tasks placed here (blocked heads they pass)
        holds, passed = self._holds, self._passed_since
        unheld: list[_Node] = []
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
            need_end = now if wt is None else now + wt  # a node whose allocation ended takes nothing
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
                if not node.free_cores and self._prefetch:
                    self._refill[node] = None
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
                if passed:  # a passed head starts after all: no hold for it
                    passed.pop(task.id, None)
                    if task.id in holds:  # started elsewhere first: its node is freed below
                        unheld.append(holds.pop(task.id))
                if tried and (-task.prio, task.seq) > worst:
                    worst = (-task.prio, task.seq)
                if (not fifo or fifo[0].state != _WAITING) and not self._next_head(shape, sq):
                    break
                fifo = sq.fifo
                head = (-sq.top, fifo[0].seq)
                head_of[shape] = head
                if not keys or (heads and head > heads[0][:2]):
                    heapq.heappush(heads, (*head, shape))
                    break
        if tried and worst[0] > -(1 << 62) and self._hold_after is not None:
            self._note_passed(tried, worst, now)
        for node in unheld:
            if node.held is not None:
                self._passed_since.pop(node.held.id, None)
                node.held = None
                self._rekey(node)
        return bool(unheld)

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

    def _run_gang(self, task: _Task, nodes: list[_Node], now: float, out: list[Assignment]) -> None:
        """Start a gang on whole nodes, leader first (called from placement_gangs)."""
        nodes = sorted(nodes, key=lambda n: n.name)
        for node in nodes:
            node.gang = task
            node.free_cores = 0
            node.free_gpus = []
            self._set_key(node, None)
        task.state, task.nodes, task.start = _RUNNING, nodes, now
        out.append(Assignment(task.id, tuple(n.name for n in nodes)))

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
                          n.draining, reserved, running, tuple(t.id for t in n.queued))  # fmt: skip

    def running(self) -> dict[TaskId, Assignment]:
        tasks = (t for t in self._tasks.values() if t.state == _RUNNING)
        return {t.id: Assignment(t.id, tuple(n.name for n in t.nodes), t.gpu_ids) for t in tasks}

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
        held = {n.held.id: n for n in self._nodes.values() if n.held is not None}
        check(held == self._holds, f"held nodes {list(held)} do not match the holds {list(self._holds)}")
        for tid, n in held.items():
            ht = n.held
            ok = ht is not None and self._tasks.get(tid) is ht and ht.state == _WAITING and ht.k == 1 and n.gang is None
            check(ok and n.reserved_by is None, f"node {n.name!r} holds {tid!r}, which cannot use it")
        check(self._n_serial == sum(1 for t in self._tasks.values() if t.k == 1 and t.state == _WAITING),
              "waiting serial count is wrong")  # fmt: skip
        self._queued_invariants(check)
