"""Prefetch: a few tasks queued on full nodes, so a node starts its next task at once.

With exact placement a task is dispatched only when cores are free, so every completion costs
its core a round trip (worker -> scheduler -> placement -> worker) before the next task
starts. With ``Placer(prefetch=d)`` a node whose cores are all in use may also get up to
``d`` *queued* tasks while the backlog is deep (more waiting serial tasks than nodes). The
node-worker holds them and starts one the moment enough of its cores are free (the plugin
gates them with a Dask worker resource counting cores); the placer mirrors that: freeing a
task's cores *promotes* the node's queued tasks that now fit, in queue order, and
:meth:`take_started` lists them so the plugin records their start.

The mirror is exact only if the worker and the placer agree on which queued task starts
next. So a node queues only tasks that start as soon as *any* of their cores frees: 1-core
tasks, or whole-node tasks behind whole-node tasks only; never GPU tasks. Then a node with a
queued task has no free core, and no direct placement lands behind a queued task.

Queued tasks are taken back (:meth:`take_steals`; the plugin asks the worker, which gives
a task back only if it has not started) when their node is reserved for a gang, held for a
starving task or draining, and when another node has free cores that nothing waiting can
use but a queued task could: a prefetched task never waits while a core it fits is idle
for longer than one round trip. Prefetch pauses while gangs wait or nodes are held, and
takes only the highest-priority waiting task, so priorities keep their order. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from balsam_dask.packing.placement_state import _INF, _QUEUED, _WAITING, TaskId, _Node, _PlacerState

if TYPE_CHECKING:
    from balsam_dask.packing.placement import Assignment


class _Prefetch(_PlacerState):
    """Queued tasks on full nodes: choosing them, promoting them, taking them back."""

    def take_started(self) -> list[TaskId]:
        """Queued tasks promoted to running since the last call (their node freed cores)."""
        out, self._started = self._started, []
        return out

    def take_steals(self) -> list[tuple[TaskId, str]]:
        """(task, node) pairs of queued tasks to take back from their node-worker. Each is
        listed once; it stays queued (and may still be promoted) until :meth:`cancel`, or
        until :meth:`steal_refused` says the worker had already started it."""
        out, self._steals = self._steals, []
        return out

    def steal_refused(self, task_id: TaskId) -> None:
        """The worker kept the task (it had started it): it may be asked for again later."""
        self._stealing.discard(task_id)

    # ------------------------------------------------------------------ choosing
    def _queueable(self, node: _Node, cores: int, now: float, wt: float | None) -> bool:
        if node.draining or node.gang is not None or node.held is not None or node.reserved_by is not None:
            return False
        if not node.queues:
            return False
        if node.free_cores or len(node.queued) >= self._prefetch or self._nodes.get(node.name) is not node:
            return False
        if cores != 1 and not (  # a whole-node task queues only behind whole-node tasks
            cores == node.cores and len(node.running) == 1 and all(t.cores == cores for t in node.queued)
        ):
            return False
        # it starts after what runs there now: ask for twice its estimate
        return node.end >= (now if wt is None else now + 2 * wt)

    def _prefetch_pass(self, now: float, out: list[Assignment]) -> None:
        """Queue the highest-priority waiting tasks on full nodes that have room."""
        from balsam_dask.packing.placement import Assignment

        if self._n_serial <= len(self._nodes):
            return  # the backlog is not deep: keep the candidates for when it is
        refill, self._refill = self._refill, {}
        if self._gangs or self._holds or self._passed_since:
            return
        head_of, queues = self._head_of, self._queues
        self._blocked = [e for e in self._blocked if head_of.get(e[2]) == e[:2]]  # drop stale entries
        for node in refill:
            while self._n_serial > len(self._nodes):
                shape = min(head_of, key=head_of.__getitem__, default=None)  # the next task in order
                if shape is None:
                    return
                cores, gpus, wt = shape
                if gpus or not self._queueable(node, cores, now, wt):
                    break
                sq = queues[shape]
                if (not sq.fifo or sq.fifo[0].state != _WAITING) and not sq.next_fifo():
                    del queues[shape], head_of[shape]
                    continue
                task = sq.fifo.popleft()
                if (sq.fifo and sq.fifo[0].state == _WAITING) or sq.next_fifo():
                    head_of[shape] = head = (-sq.top, sq.fifo[0].seq)
                    self._blocked.append((*head, shape))  # it fits no node now either
                else:
                    del queues[shape], head_of[shape]
                task.state, task.nodes, task.start = _QUEUED, [node], now
                node.queued.append(task)
                self._n_serial -= 1
                self._n_queued += 1
                self._queued_min_prio = min(self._queued_min_prio, task.prio)
                self._queued_on.add(node)
                out.append(Assignment(task.id, (node.name,), (), True))

    # ------------------------------------------------------------------ taking back
    def _review_queues(self, now: float) -> None:
        """List queued tasks to take back: on nodes that must not start them, behind which a
        waiting task of higher priority would wait, or that fit free cores elsewhere which no
        waiting task can use."""
        stealing, steals = self._stealing, self._steals
        free = [(k, len(self._buckets[k])) for k in self._keys]  # (free cores, GPUs, until), count
        top = -min(self._head_of.values())[0] if self._head_of else None  # the highest waiting priority
        self._queued_min_prio = _INF
        for node in list(self._queued_on):
            if not node.queued:
                self._queued_on.discard(node)
                continue
            blocked = node.draining or node.reserved_by is not None or node.held is not None
            for task in reversed(node.queued):  # the last queued starts last: take it first
                if task.id in stealing:
                    continue
                if not blocked and (top is None or task.prio >= top):
                    self._queued_min_prio = min(self._queued_min_prio, task.prio)
                    need = now if task.wt is None else now + task.wt
                    slot = next((i for i, (k, c) in enumerate(free) if c and k[0] >= task.cores and k[2] >= need), None)
                    if slot is None:
                        continue
                    k, c = free[slot]
                    free[slot] = (k, c - 1)  # one steal per free node slot (enough for 1-core tasks)
                stealing.add(task.id)
                steals.append((task.id, node.name))

    def _queued_invariants(self, check: Callable[[bool, str], None]) -> None:
        """Queued tasks are where their node says, and a node with queued tasks is full."""
        total = 0
        for name, n in self._nodes.items():
            total += len(n.queued)
            check(not n.queued or n.free_cores == 0, f"node {name!r} has queued tasks and free cores")
            check(len(n.queued) <= self._prefetch, f"node {name!r} queues {len(n.queued)} tasks")
            for t in n.queued:
                good = t.state == _QUEUED and t.nodes == [n] and self._tasks.get(t.id) is t and not t.gpus
                check(good, f"node {name!r} queues task {t.id!r} wrongly")
        check(total == self._n_queued, f"{total} queued tasks on nodes, {self._n_queued} counted")
        stale = [t for t in self._stealing if getattr(self._tasks.get(t), "state", None) != _QUEUED]
        check(not stale, f"tasks {stale} are being taken back but are not queued")
