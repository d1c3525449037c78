"""Serial tasks (``nodes == 1``): best-fit placement with exact cores, GPU ids and walltime.

Waiting tasks sit in one FIFO per (shape, priority); shapes take turns in a heap by their next
task's (priority, arrival). Each task goes to the eligible node with the fewest free cores (then
GPUs, then the least remaining time) that fits, found by bisecting the free-capacity index, so
whole nodes stay free for gangs; a task with a preferred node (``near``: where its inputs are)
goes there if it fits there now. A task that fits nowhere never blocks a smaller one behind it
(holds.py keeps it from starving). Pure.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort

from balsam_dask.packing.core import PlacerCore
from balsam_dask.packing.holds import Holds
from balsam_dask.packing.prefetch import Prefetch
from balsam_dask.packing.records import INF, RUNNING, WAITING, Assignment, Key, Node, QueueKey, ShapeQueue, Task

#: Index steps after which one pass builds per-free-cores bounds of the nodes' ends, to skip
#: whole groups of nodes whose allocations end too early.
_LONG_SCAN = 8


class SerialPlacement:
    """The queues of waiting serial tasks and the pass that places them."""

    def __init__(self, core: PlacerCore, holds: Holds, prefetch: Prefetch) -> None:
        self.core, self.holds, self.prefetch = core, holds, prefetch
        self._group: dict[int, float] | None = None  # free cores -> latest end, built on a long scan
        self._at_least: list[float] = []  # latest end among nodes with at least c free cores

    def submit(self, task: Task) -> None:
        core = self.core
        shape = (task.cores, task.gpus, task.wt)
        queue = core.queues.get(shape)
        if queue is None:
            queue = core.queues[shape] = ShapeQueue()
        queue.push(task)
        core.n_serial += 1
        head = (-queue.top, queue.fifo[0].seq)
        if core.head_of.get(shape) != head:
            core.head_of[shape] = head
            heapq.heappush(core.heads, (*head, shape))

    def place(self, now: float, out: list[Assignment]) -> bool:
        """Place waiting serial tasks; True when nodes held for tasks that started elsewhere
        were freed (a second pass may use them)."""
        core = self.core
        heads, head_of, queues = core.heads, core.head_of, core.queues
        self._unblock()
        tried = core.blocked  # shapes that fit nowhere now
        worst = (-(1 << 62), 0)  # the last in order of the tasks placed here (blocked heads they pass)
        unheld: list[Node] = []
        self._group, self._at_least = None, []
        while heads and core.keys:
            entry = heapq.heappop(heads)
            shape = entry[2]
            if head_of.get(shape) != entry[:2]:
                continue  # stale entry
            sq = queues[shape]
            if (not sq.fifo or sq.fifo[0].state != WAITING) and not self._next_head(shape, sq):
                continue  # only cancelled tasks were left, or the head changed
            cores, gpus, wt = shape
            need_end = now if wt is None else now + wt  # a node whose allocation ended takes nothing
            if self._group is not None and (cores >= len(self._at_least) or self._at_least[cores] < need_end):
                tried.append(entry)
                continue
            while True:
                key = self._best_fit(cores, gpus, need_end)
                if key is None:  # fits nowhere now; the other shapes still get their turn
                    tried.append((-sq.top, sq.fifo[0].seq, shape))
                    break
                task = sq.fifo.popleft()
                near = task.near
                if near is not None:  # where its inputs are, if that node fits it now
                    nk = near.key
                    if nk is not None and nk[0] >= cores and nk[1] >= gpus and nk[2] >= need_end:
                        key = nk
                    else:
                        near = None
                self._start(task, key, now, out, near)
                if self.holds.passed_since:  # a passed head starts after all: no hold for it
                    self.holds.passed_since.pop(task.id, None)
                    node = self.holds.of.pop(task.id, None)
                    if node is not None:  # started elsewhere first: its node is freed below
                        unheld.append(node)
                if tried and (-task.prio, task.seq) > worst:
                    worst = (-task.prio, task.seq)
                if (not sq.fifo or sq.fifo[0].state != WAITING) and not self._next_head(shape, sq):
                    break
                head = (-sq.top, sq.fifo[0].seq)
                head_of[shape] = head
                if not core.keys or (heads and head > heads[0][:2]):
                    heapq.heappush(heads, (*head, shape))
                    break
        if tried and worst[0] > -(1 << 62) and self.holds.hold_after is not None:
            self.holds.note_passed(tried, worst, now)
        self.holds.started_elsewhere(unheld)
        return bool(unheld)

    def _unblock(self) -> None:
        """Shapes blocked at the last pass take their turn again if some node grew to fit them."""
        core = self.core
        if core.blocked:
            fc, fg = core.grown
            still = []
            for entry in core.blocked:
                if entry[2][0] <= fc and entry[2][1] <= fg:
                    heapq.heappush(core.heads, entry)
                else:
                    still.append(entry)
            core.blocked = still
        core.grown = (0, 0)

    def _best_fit(self, cores: int, gpus: int, need_end: float) -> Key | None:
        """The first index key with enough cores, GPUs and time (keys sort by free cores, free
        GPUs, end: jump over whole sub-groups that cannot fit)."""
        keys = self.core.keys
        j, n = bisect_left(keys, (cores,)), len(keys)
        steps = 0
        while j < n:
            k = keys[j]
            if k[1] < gpus:
                j = bisect_left(keys, (k[0], gpus), j)
                continue
            if k[2] >= need_end:
                return k
            steps += 1
            if self._group is None and steps == _LONG_SCAN:
                self._build_bounds()
            group = self._group
            if group is not None and group.get(k[0], -INF) < need_end:
                j = bisect_left(keys, (k[0] + 1,), j)  # no node with k[0] free cores lasts
            else:
                j = bisect_left(keys, (k[0], k[1], need_end), j)
        return None

    def _build_bounds(self) -> None:
        """Latest end per free-core count: an upper bound while this pass only uses capacity."""
        group: dict[int, float] = {}
        for fc, _, end in self.core.keys:
            if end > group.get(fc, -INF):
                group[fc] = end
        at_least = [-INF] * (max(group) + 2)
        for c in range(len(at_least) - 2, -1, -1):
            at_least[c] = max(at_least[c + 1], group.get(c, -INF))
        self._group, self._at_least = group, at_least

    def _start(self, task: Task, key: Key, now: float, out: list[Assignment], node: Node | None = None) -> None:
        """Run ``task`` on ``node`` (default: any) of index bucket ``key`` and index the node anew."""
        core = self.core
        bucket = core.buckets[key]
        if node is None:
            node = core.by_idx[bucket.pop()]
        else:
            bucket.remove(node.idx)
        if not bucket:
            del core.buckets[key], core.keys[bisect_left(core.keys, key)]
        node.key = None
        node.free_cores -= task.cores
        ids: tuple[str, ...] = ()
        if task.gpus:
            ids = tuple(node.free_gpus[: task.gpus])
            del node.free_gpus[: task.gpus]
        if not node.running and node.reserved_by is not None:
            node.reserved_by.busy += 1  # backfilled onto a reserved node
        node.running[task] = None
        wt = task.wt
        if wt is None:
            node.est = INF
        elif now + wt > node.est and not node.est_dirty:
            node.est = now + wt
        task.state, task.nodes, task.gpu_ids, task.start = RUNNING, [node], ids, now
        core.n_serial -= 1
        if not node.free_cores and self.prefetch.depth:
            self.prefetch.refill[node] = None
        if node.free_cores > 0:  # back into the index under its new free capacity
            res = node.reserved_by  # not None only when backfilling: end by the promise
            end = node.end if res is None else min(node.end, res.promise)
            if res is None or res.promise < INF:
                nk = (node.free_cores, len(node.free_gpus), end)
                nb = core.buckets.get(nk)
                if nb is None:
                    nb = core.buckets[nk] = set()
                    insort(core.keys, nk)
                nb.add(node.idx)
                node.key = nk
                group = self._group
                if group is not None and end > group.get(nk[0], -INF):
                    group[nk[0]] = end
        out.append(Assignment(task.id, (node.name,), ids))

    def _next_head(self, shape: QueueKey, sq: ShapeQueue) -> bool:
        """The shape's head was taken or cancelled: queue its next task (False if none)."""
        core = self.core
        if not sq.next_fifo():
            del core.queues[shape], core.head_of[shape]
            return False
        head = (-sq.top, sq.fifo[0].seq)
        if core.head_of.get(shape) != head:
            core.head_of[shape] = head
            heapq.heappush(core.heads, (*head, shape))
            return False  # it waits for its turn in the heap
        return True
