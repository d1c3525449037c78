"""Gangs (``nodes == k > 1``): reservations, the head gang and EASY backfilling.

Waiting gangs get reservations in priority/FIFO order: the ``k`` nodes of one allocation
expected to be idle soonest take no new tasks and drain; when all are idle the gang starts.
The first gang that cannot be fully reserved becomes the *head*: it keeps its allocation and
collects every node released there (it moves only to an allocation that can take it whole at
once), so a wide gang never starves behind narrower gangs or a stream of serial tasks. With
backfilling, reserved idle nodes are lent to tasks whose estimate ends before the
reservation's promised start. Pure.
"""

from __future__ import annotations

import heapq

from balsam_dask.packing.core import PlacerCore
from balsam_dask.packing.holds import Holds
from balsam_dask.packing.records import INF, RUNNING, Assignment, Node, Reservation, Task, TaskId, order, per_alloc


class Gangs:
    """Waiting gangs, their reservations, and starting them on whole nodes."""

    def __init__(self, core: PlacerCore, holds: Holds) -> None:
        self.core = core
        self.holds = holds
        self.waiting: dict[TaskId, Task] = {}  # waiting gangs (with or without reservation)
        self.res: dict[TaskId, Reservation] = {}
        self.head: Reservation | None = None
        self.ready: set[Reservation] = set()  # complete reservations whose nodes are all idle
        self.reserved_at = -1  # core.version when reservations were last computed
        self.deadline = INF  # earliest time a reservation's allocation may become too short

    # ------------------------------------------------------------------ schedule
    def schedule(self, now: float, out: list[Assignment]) -> None:
        """Reserve, release and start gangs."""
        if now > self.deadline:  # a reservation's allocation now ends too soon for it
            for res in [r for r in self.res.values() if r.min_end < now + (r.task.wt or 0.0)]:
                self.release(res)
        if self.core.version != self.reserved_at:
            self._reserve(now, out)
        if self.ready:
            ready = sorted(self.ready, key=lambda r: order(r.task))
            self.ready.clear()
            for res in ready:
                self._start(res, now, out)

    def _reserve(self, now: float, out: list[Assignment]) -> None:
        """Reserve nodes for waiting gangs in priority order; extend the head; backfill."""
        core = self.core
        self.reserved_at = core.version
        pool: dict[str, list[Node]] = {}  # nodes free for reservation, per allocation
        for node in core.nodes.values():
            if node.reserved_by is None and node.gang is None and not node.draining:
                pool.setdefault(node.alloc, []).append(node)
        head = self.head
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
                self.release(head)
            else:
                self._extend(head, pool, now)
        failed = self._reserve_waiting(pool, now)
        if core.backfill and failed:
            self._backfill(failed, now, out)
        self.deadline = min((r.min_end - (r.task.wt or 0.0) for r in self.res.values() if r.nodes), default=INF)

    def _reserve_waiting(self, pool: dict[str, list[Node]], now: float) -> list[Task]:
        """Reserve for each waiting gang without a reservation; returns those that got none."""
        failed: list[Task] = []
        misses: list[tuple[int, float]] = []  # (k, need) that found no nodes: wider/longer fail too
        widest: dict[float, tuple[int, dict[str, int]]] = {}  # per need: allocations wide enough
        most = max(map(len, pool.values()), default=0)  # pools only shrink during the pass
        for task in sorted(self.waiting.values(), key=order):
            if task.id in self.res:
                continue
            need = now + (task.wt or 0.0)
            hopeless = task.k > most or any(k <= task.k and n <= need for k, n in misses)
            best: tuple[tuple[float, int, str], str, list[Node]] | None = None
            for alloc, nodes in () if hopeless else pool.items():
                eligible = [n for n in nodes if n.end >= need] if len(nodes) >= task.k else ()
                if len(eligible) >= task.k:
                    chosen = heapq.nsmallest(task.k, eligible, key=lambda n: self._drain_key(n, now))
                    score = (self._drain_time(chosen[-1], now), sum(n.cores - n.free_cores for n in chosen), alloc)
                    if best is None or score < best[0]:
                        best = (score, alloc, chosen)
            if best is not None:
                res = self.res[task.id] = Reservation(task, best[1])
                self._take(res, best[2], pool[best[1]], now)
                most = max(map(len, pool.values()), default=0)
                continue
            failed.append(task)
            if not hopeless:
                misses.append((task.k, need))
            if self.head is None:
                # The oldest gang that cannot be reserved now keeps an allocation where it fits
                # and collects its nodes as they are released.
                if need not in widest:
                    w = self._timely_width(task, now)
                    widest[need] = (max(w.values(), default=0), w)
                if widest[need][0] >= task.k:
                    fits = sorted(a for a, n in widest[need][1].items() if n >= task.k)
                    alloc = max(fits, key=lambda a: sum(1 for n in pool.get(a, []) if n.end >= need))
                    self.head = self.res[task.id] = Reservation(task, alloc)
                    self._extend(self.head, pool, now)
                    most = max(map(len, pool.values()), default=0)
        return failed

    def _backfill(self, failed: list[Task], now: float, out: list[Assignment]) -> None:
        idle: dict[str, list[Node]] = {}  # idle nodes a gang could borrow, per allocation
        for node in self.core.nodes.values():
            r = node.reserved_by
            lend = r is None or (r.promise < INF and r not in self.ready)
            if not node.running and node.gang is None and node.held is None and not node.draining and lend:
                idle.setdefault(node.alloc, []).append(node)
        tried: list[tuple[int, float]] = []
        for task in failed:
            end = now + (task.wt or INF)
            most = max(map(len, idle.values()), default=0)
            if task.id in self.res or task.k > most or any(k <= task.k and e <= end for k, e in tried):
                continue
            if not self._backfill_gang(task, idle, end, now, out):
                tried.append((task.k, end))

    def _extend(self, res: Reservation, pool: dict[str, list[Node]], now: float) -> None:
        need = now + (res.task.wt or 0.0)
        nodes = pool.get(res.alloc_id, [])
        eligible = [n for n in nodes if n.end >= need]
        chosen = heapq.nsmallest(res.task.k - len(res.nodes), eligible, key=lambda n: self._drain_key(n, now))
        self._take(res, chosen, nodes, now)
        if len(res.nodes) < res.task.k and self.core.backfill:  # promise: own drain, others' release
            times = []
            for n in self.core.nodes.values():
                if n.alloc == res.alloc_id and n.reserved_by is not res and not n.draining and n.end >= need:
                    r = n.reserved_by
                    if r is not None:
                        times.append(r.promise + (r.task.wt or INF) if len(r.nodes) == r.task.k else INF)
                    else:
                        times.append(self._drain_time(n, now))
            missing = res.task.k - len(res.nodes)
            later = heapq.nsmallest(missing, times)[-1] if len(times) >= missing else INF
            own = max((self._drain_time(n, now) for n in res.nodes), default=now)
            self._promise(res, max(own, later))

    def _take(self, res: Reservation, chosen: list[Node], pool_list: list[Node], now: float) -> None:
        if chosen:
            picked = set(chosen)
            pool_list[:] = [n for n in pool_list if n not in picked]
        for node in chosen:
            self.holds.unhold(node, rekey=False)  # a gang's reservation comes first: the serial task holds anew
            node.reserved_by = res
            res.nodes.append(node)
            res.min_end = min(res.min_end, node.end)
            if node.running or node.gang is not None:
                res.busy += 1
            self.core.set_key(node, None)
        if len(res.nodes) == res.task.k:
            if self.head is res:
                self.head = None
            if res.busy == 0:
                self.ready.add(res)
            elif self.core.backfill:
                self._promise(res, max(self._drain_time(n, now) for n in res.nodes))

    def _promise(self, res: Reservation, when: float) -> None:
        res.promise = when
        for node in res.nodes:
            self.core.rekey(node)

    def _backfill_gang(self, task: Task, idle: dict[str, list[Node]], end: float, now: float,
                       out: list[Assignment]) -> bool:  # fmt: skip
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
            del self.waiting[task.id]
            self._run(task, chosen, now, out)
            return True
        return False

    def _start(self, res: Reservation, now: float, out: list[Assignment]) -> None:
        task = res.task
        if res.busy or self.res.get(task.id) is not res:
            return  # a node was lent again meanwhile, or the reservation is gone
        if res.min_end < now + (task.wt or 0.0):
            self.release(res)
            return
        del self.res[task.id], self.waiting[task.id]
        for node in res.nodes:
            node.reserved_by = None
        self._run(task, res.nodes, now, out)

    def _run(self, task: Task, nodes: list[Node], now: float, out: list[Assignment]) -> None:
        """Start a gang on whole nodes, leader first."""
        nodes = sorted(nodes, key=lambda n: n.name)
        for node in nodes:
            node.gang = task
            node.free_cores = 0
            node.free_gpus = []
            self.core.set_key(node, None)
        task.state, task.nodes, task.start = RUNNING, nodes, now
        out.append(Assignment(task.id, tuple(n.name for n in nodes)))

    # ------------------------------------------------------------------ node events
    def release(self, res: Reservation) -> None:
        """Give the reserved nodes back; the gang waits again."""
        self.res.pop(res.task.id, None)
        self.ready.discard(res)
        if self.head is res:
            self.head = None
        for node in res.nodes:
            node.reserved_by = None
            self.core.rekey(node)
        res.nodes = []
        self.core.version += 1

    def idle(self, node: Node) -> None:
        """The node runs nothing any more: a reservation waiting for it may be complete."""
        node.est, node.est_dirty = 0.0, False
        res = node.reserved_by
        if res is not None:
            res.busy -= 1
            if res.busy == 0 and len(res.nodes) == res.task.k:
                self.ready.add(res)
        self.core.rekey(node)

    def withdraw(self, task: Task) -> None:
        """A waiting gang was cancelled."""
        res = self.res.get(task.id)
        if res is not None:
            self.release(res)
        del self.waiting[task.id]

    # ------------------------------------------------------------------ estimates
    def _timely_width(self, task: Task, now: float) -> dict[str, int]:
        """Per allocation: nodes taking tasks whose allocation lasts long enough for the gang."""
        need = now + (task.wt or 0.0)
        return per_alloc(n for n in self.core.nodes.values() if not n.draining and n.end >= need)

    def _drain_time(self, node: Node, now: float) -> float:
        """When the node is expected to be idle (infinite if a running task has no estimate)."""
        if node.gang is not None:
            return node.gang.start + node.gang.wt if node.gang.wt is not None else INF
        if not node.running:
            return now
        if node.est_dirty:
            node.est = max((t.start + t.wt if t.wt is not None else INF for t in node.running), default=0.0)
            node.est_dirty = False
        return max(node.est, now)

    def _drain_key(self, node: Node, now: float) -> tuple[float, int, str]:
        """Nodes expected to be idle soonest first, then fewest running cores, then name."""
        return (self._drain_time(node, now), node.cores - node.free_cores, node.name)
