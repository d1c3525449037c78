"""Gang placement of the placement core: reservations, the head gang and EASY backfilling.

Internal to :mod:`balsam_dask.packing.placement` (its docstring describes the policy):
:class:`_GangReservations` reserves the ``k`` nodes of one allocation expected to be idle
soonest for each waiting gang, lets the first gang that cannot be reserved (the *head*) collect
the nodes of its allocation as they are released, promises reserved gangs a start time when
backfilling, and starts a gang once all its reserved nodes are idle.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from balsam_dask.packing.placement_state import _INF, _Node, _order, _per_alloc, _PlacerState, _Reservation, _Task

if TYPE_CHECKING:
    from balsam_dask.packing.placement import Assignment


class _GangReservations(_PlacerState):
    """Reserving, promising, backfilling and starting gangs (``Resources.nodes > 1``)."""

    if TYPE_CHECKING:  # provided by Placer, which builds the Assignment

        def _run_gang(self, task: _Task, nodes: list[_Node], now: float, out: list[Assignment]) -> None: ...

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
                if not node.running and node.gang is None and node.held is None and not node.draining and lend:
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
            if node.held is not None:  # a gang's reservation comes first: the serial task holds anew
                self._holds.pop(node.held.id, None)
                node.held = None
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
