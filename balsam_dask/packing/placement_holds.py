"""Holds: a serial task that later, narrower tasks keep passing gets a node kept for it.

Serial placement never lets a task that fits nowhere block smaller ones behind it; alone,
that starves a wide task (say 4 cores) under a steady stream of 1-core tasks, because no
node ever has 4 cores free at once. When the head of a shape's queue fits nowhere and tasks
that come after it in priority/FIFO order have started for ``hold_after`` seconds, the
placer *holds* one node for it: the node whose allocation fits its walltime, with the most
free cores (then the earliest estimated end), takes no new task, and the held task starts
there as soon as enough of its cores and GPUs are free. Gangs have reservations for the
same purpose (``placement_gangs``). Pure, like the rest of the placer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balsam_dask.packing.placement_state import _RUNNING, _WAITING, Shape, TaskId, _Node, _PlacerState, _Task

if TYPE_CHECKING:
    from balsam_dask.packing.placement import Assignment


class _SerialHolds(_PlacerState):
    """Holding nodes for serial tasks that would otherwise starve."""

    def _note_passed(self, blocked: list[tuple[int, int, Shape]], worst: tuple[int, int], now: float) -> None:
        """Tasks up to order ``worst`` started while the heads in ``blocked`` fit nowhere."""
        for entry in blocked:
            if entry[:2] < worst:
                task = self._head_task(entry[2])
                if task is not None:
                    self._passed_since.setdefault(task.id, now)

    def _head_task(self, shape: Shape) -> _Task | None:
        sq = self._queues.get(shape)
        if sq is None or not sq.fifo or sq.fifo[0].state != _WAITING:
            return None
        return sq.fifo[0]

    def _hold_starving(self, now: float) -> None:
        for _, _, shape in self._blocked:
            task = self._head_task(shape)
            if task is None or task.id in self._holds:
                continue
            since = self._passed_since.get(task.id)
            if since is None or self._hold_after is None or now - since < self._hold_after:
                continue
            node = self._hold_candidate(task, now)
            if node is None:  # no node can be held now: look again hold_after seconds later
                self._passed_since[task.id] = now
            else:
                node.held = task
                self._holds[task.id] = node
                self._set_key(node, None)
                self._check_hold(node)

    def _hold_candidate(self, task: _Task, now: float) -> _Node | None:
        need_end = now if task.wt is None else now + task.wt
        usable = [
            n for n in self._nodes.values()
            if n.held is None and n.gang is None and n.reserved_by is None and not n.draining
            and n.cores >= task.cores and n.gpus >= task.gpus and n.end >= need_end
        ]  # fmt: skip
        return max(usable, key=lambda n: (n.free_cores, -n.est), default=None)

    def _unhold(self, node: _Node) -> None:
        task = node.held
        if task is not None:
            node.held = None
            self._holds.pop(task.id, None)
            self._rekey(node)

    def _forget_hold(self, task_id: TaskId) -> None:
        """The task left (cancelled, or its node is gone): drop its hold and passing record."""
        self._passed_since.pop(task_id, None)
        node = self._holds.get(task_id)
        if node is not None:
            self._unhold(node)

    def _start_held(self, now: float, out: list[Assignment]) -> None:
        from balsam_dask.packing.placement import Assignment

        ready, self._hold_ready = self._hold_ready, []
        for node in ready:
            task = node.held
            if task is None or self._nodes.get(node.name) is not node:
                continue
            node.held = None  # unindexed while held: the node is re-keyed below
            self._holds.pop(task.id, None)
            self._passed_since.pop(task.id, None)
            if task.state != _WAITING or node.free_cores < task.cores or len(node.free_gpus) < task.gpus:
                self._rekey(node)
                continue
            node.free_cores -= task.cores
            ids = tuple(node.free_gpus[: task.gpus])
            del node.free_gpus[: task.gpus]
            if not node.running and node.reserved_by is not None:
                node.reserved_by.busy += 1
            node.running[task] = None
            node.est_dirty = True
            task.state, task.nodes, task.gpu_ids, task.start = _RUNNING, [node], ids, now
            self._n_serial -= 1  # its queue entry is skipped as no longer waiting
            self._rekey(node)
            out.append(Assignment(task.id, (node.name,), ids))
