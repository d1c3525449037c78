"""Holds: a serial task that later, narrower tasks keep passing gets a node kept for it.

When the head of a shape's queue fits nowhere and tasks after it in priority/FIFO order have
started for ``hold_after`` seconds, one node (whose allocation fits its walltime, with the
most free cores, then the earliest estimated end) takes no new task until the held task fits
there. Pure.
"""

from __future__ import annotations

from balsam_dask.errors import InvalidSpec
from balsam_dask.packing.core import PlacerCore
from balsam_dask.packing.records import RUNNING, WAITING, Assignment, Node, QueueKey, Task, TaskId

#: Seconds a blocked serial head may be passed by later tasks before a node is held for it
#: (``Placer(hold_after=None)`` never holds).
HOLD_AFTER = 30.0


class Holds:
    """Nodes held for serial tasks that would otherwise starve."""

    def __init__(self, core: PlacerCore, hold_after: float | None) -> None:
        if hold_after is not None and (isinstance(hold_after, bool) or not isinstance(hold_after, (int, float))
                                       or hold_after < 0):  # fmt: skip
            raise InvalidSpec(f"hold_after={hold_after!r} is invalid: use seconds >= 0 or None, e.g. hold_after=30")
        self.core = core
        self.hold_after = hold_after
        self.of: dict[TaskId, Node] = {}  # held serial task -> its node
        self.ready: list[Node] = []  # held nodes whose task now fits
        self.passed_since: dict[TaskId, float] = {}  # blocked heads: since when later tasks pass them

    def note_passed(self, blocked: list[tuple[int, int, QueueKey]], worst: tuple[int, int], now: float) -> None:
        """Tasks up to order ``worst`` started while the heads in ``blocked`` fit nowhere."""
        for entry in blocked:
            if entry[:2] < worst:
                task = self._head_task(entry[2])
                if task is not None:
                    self.passed_since.setdefault(task.id, now)

    def _head_task(self, shape: QueueKey) -> Task | None:
        sq = self.core.queues.get(shape)
        if sq is None or not sq.fifo or sq.fifo[0].state != WAITING:
            return None
        return sq.fifo[0]

    def hold_starving(self, now: float) -> None:
        """Hold a node for each blocked head passed for ``hold_after`` seconds."""
        for _, _, shape in self.core.blocked:
            task = self._head_task(shape)
            if task is None or task.id in self.of:
                continue
            since = self.passed_since.get(task.id)
            if since is None or self.hold_after is None or now - since < self.hold_after:
                continue
            node = self._candidate(task, now)
            if node is None:  # no node can be held now: look again hold_after seconds later
                self.passed_since[task.id] = now
            else:
                node.held = task
                self.of[task.id] = node
                self.core.set_key(node, None)
                self.check(node)

    def _candidate(self, task: Task, now: float) -> Node | None:
        need_end = now if task.wt is None else now + task.wt
        usable = [
            n for n in self.core.nodes.values()
            if n.held is None and n.gang is None and n.reserved_by is None and not n.draining
            and n.cores >= task.cores and n.gpus >= task.gpus and n.end >= need_end
        ]  # fmt: skip
        return max(usable, key=lambda n: (n.free_cores, -n.est), default=None)

    def check(self, node: Node) -> None:
        """A held node's free capacity grew: its task may start at the next schedule()."""
        task = node.held
        if task is not None and node.free_cores >= task.cores and len(node.free_gpus) >= task.gpus:
            self.ready.append(node)

    def unhold(self, node: Node, rekey: bool = True) -> None:
        task = node.held
        if task is not None:
            node.held = None
            self.of.pop(task.id, None)
            if rekey:
                self.core.rekey(node)

    def forget(self, task_id: TaskId) -> None:
        """The task left (cancelled, or its node is gone): drop its hold and passing record."""
        self.passed_since.pop(task_id, None)
        node = self.of.get(task_id)
        if node is not None:
            self.unhold(node)

    def started_elsewhere(self, nodes: list[Node]) -> None:
        """Held tasks started on other nodes first: their held nodes take tasks again."""
        for node in nodes:
            if node.held is not None:
                self.passed_since.pop(node.held.id, None)
                node.held = None
                self.core.rekey(node)

    def start_held(self, now: float, out: list[Assignment]) -> None:
        """Start held tasks whose nodes now have room for them."""
        core = self.core
        ready, self.ready = self.ready, []
        for node in ready:
            task = node.held
            if task is None or core.nodes.get(node.name) is not node:
                continue
            node.held = None  # unindexed while held: the node is re-keyed below
            self.of.pop(task.id, None)
            self.passed_since.pop(task.id, None)
            if task.state != WAITING or node.free_cores < task.cores or len(node.free_gpus) < task.gpus:
                core.rekey(node)
                continue
            node.free_cores -= task.cores
            ids = tuple(node.free_gpus[: task.gpus])
            del node.free_gpus[: task.gpus]
            if not node.running and node.reserved_by is not None:
                node.reserved_by.busy += 1
            node.running[task] = None
            node.est_dirty = True
            task.state, task.nodes, task.gpu_ids, task.start = RUNNING, [node], ids, now
            core.n_serial -= 1  # its queue entry is skipped as no longer waiting
            core.rekey(node)
            out.append(Assignment(task.id, (node.name,), ids))
