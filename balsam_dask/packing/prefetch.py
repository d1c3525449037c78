"""Prefetch: a few tasks queued on full nodes, so a node starts its next task at once.

A node whose cores are all in use may get up to ``depth`` *queued* tasks while the backlog is
deep (more waiting serial tasks than nodes). Its worker starts one the moment enough cores
are free (the scheduler plugin gates them with a worker resource counting cores); the engine
mirrors that: freeing cores *promotes* the node's queued tasks that now fit, in queue order.
The mirror is exact only if worker and engine agree on which queued task starts next, so a
node queues only 1-core tasks, or whole-node tasks behind whole-node tasks; never GPU tasks.
Queued tasks are taken back (``take_steals``) when their node is reserved, held or draining,
when a higher-priority task waits, or when free cores elsewhere could run them. Pure.
"""

from __future__ import annotations

from collections.abc import Callable

from balsam_dask import validate
from balsam_dask.packing.core import PlacerCore
from balsam_dask.packing.gangs import Gangs
from balsam_dask.packing.holds import Holds
from balsam_dask.packing.records import INF, QUEUED, RUNNING, WAITING, Assignment, Node, Task, TaskId


class Prefetch:
    """Queued tasks on full nodes: choosing them, promoting them, taking them back."""

    def __init__(self, core: PlacerCore, gangs: Gangs, holds: Holds, depth: int) -> None:
        validate.integer("prefetch", depth, "prefetch=2 (tasks queued per full node)", 0)
        self.core, self.gangs, self.holds = core, gangs, holds
        self.depth = depth  # queued tasks per full node (0: none)
        self.n_queued = 0
        self.queued_on: set[Node] = set()  # nodes that may have queued tasks
        self.refill: dict[Node, None] = {}  # full nodes that may take queued tasks (ordered set)
        self.started: list[TaskId] = []  # queued tasks promoted to running (take_started)
        self.stealing: set[TaskId] = set()  # queued tasks being taken back
        self.steals: list[tuple[TaskId, str]] = []  # (task, node) to take back (take_steals)
        self.review = False  # queued tasks may have to go back (node blocked, higher priority waits)
        self.queued_min_prio = INF  # a lower bound of the queued tasks' priorities

    def take_started(self) -> list[TaskId]:
        """Queued tasks promoted to running since the last call (their node freed cores)."""
        out, self.started = self.started, []
        return out

    def take_steals(self) -> list[tuple[TaskId, str]]:
        """(task, node) pairs of queued tasks to take back from their node-worker. Each is
        listed once; it stays queued (and may still be promoted) until the placer's cancel(),
        or until :meth:`steal_refused` says the worker had already started it."""
        out, self.steals = self.steals, []
        return out

    def steal_refused(self, task_id: TaskId) -> None:
        """The worker kept the task (it had started it): it may be asked for again later."""
        self.stealing.discard(task_id)

    # ------------------------------------------------------------------ node events
    def promote(self, node: Node) -> None:
        """Cores were freed on ``node``: its queued tasks that fit now run, in queue order, as
        the worker starts them."""
        q = node.queued
        while q and q[0].cores <= node.free_cores:
            task = q.popleft()
            node.free_cores -= task.cores
            node.running[task] = None
            task.state = RUNNING
            self.n_queued -= 1
            self.stealing.discard(task.id)
            self.started.append(task.id)
        node.est_dirty = True
        if self.depth and not node.free_cores and len(q) <= self.depth // 2:  # refilled at half: fewer, larger
            self.refill[node] = None

    def drop_node(self, node: Node) -> None:
        """The node is gone: its queued tasks were never started (the worker hands them back)."""
        for task in node.queued:
            self.stealing.discard(task.id)
            self.core.drop(task)
        self.n_queued -= len(node.queued)
        node.queued.clear()
        self.queued_on.discard(node)

    def withdraw(self, task: Task) -> None:
        """A queued task was cancelled."""
        node = task.nodes[0]
        node.queued.remove(task)
        self.n_queued -= 1
        self.stealing.discard(task.id)
        if self.depth and not node.free_cores:
            self.refill[node] = None

    # ------------------------------------------------------------------ choosing
    def _queueable(self, node: Node, cores: int, now: float, wt: float | None) -> bool:
        if node.draining or node.gang is not None or node.held is not None or node.reserved_by is not None:
            return False
        if not node.queues:
            return False
        if node.free_cores or len(node.queued) >= self.depth or self.core.nodes.get(node.name) is not node:
            return False
        if cores != 1 and not (  # a whole-node task queues only behind whole-node tasks
            cores == node.cores and len(node.running) == 1 and all(t.cores == cores for t in node.queued)
        ):
            return False
        # it starts after what runs there now: ask for twice its estimate
        return node.end >= (now if wt is None else now + 2 * wt)

    def fill(self, now: float, out: list[Assignment]) -> None:
        """Queue the highest-priority waiting tasks on full nodes that have room."""
        core = self.core
        if core.n_serial <= len(core.nodes):
            return  # the backlog is not deep: keep the candidates for when it is
        refill, self.refill = self.refill, {}
        if self.gangs.waiting or self.holds.of or self.holds.passed_since:
            return
        head_of, queues = core.head_of, core.queues
        core.blocked = [e for e in core.blocked if head_of.get(e[2]) == e[:2]]  # drop stale entries
        for node in refill:
            while core.n_serial > len(core.nodes):
                shape = min(head_of, key=head_of.__getitem__, default=None)  # the next task in order
                if shape is None:
                    return
                cores, gpus, wt = shape
                if gpus or not self._queueable(node, cores, now, wt):
                    break
                sq = queues[shape]
                if (not sq.fifo or sq.fifo[0].state != WAITING) and not sq.next_fifo():
                    del queues[shape], head_of[shape]
                    continue
                task = sq.fifo.popleft()
                if (sq.fifo and sq.fifo[0].state == WAITING) or sq.next_fifo():
                    head_of[shape] = head = (-sq.top, sq.fifo[0].seq)
                    core.blocked.append((*head, shape))  # it fits no node now either
                else:
                    del queues[shape], head_of[shape]
                task.state, task.nodes, task.start = QUEUED, [node], now
                node.queued.append(task)
                core.n_serial -= 1
                self.n_queued += 1
                self.queued_min_prio = min(self.queued_min_prio, task.prio)
                self.queued_on.add(node)
                out.append(Assignment(task.id, (node.name,), (), True))

    # ------------------------------------------------------------------ taking back
    def wants_review(self) -> bool:
        core = self.core
        return bool(self.n_queued) and (
            self.review or bool(self.gangs.waiting) or bool(self.holds.of)
            or (bool(core.keys) and core.n_serial <= len(core.nodes))
        )  # fmt: skip

    def review_queues(self, now: float) -> None:
        """List queued tasks to take back: on nodes that must not start them, behind which a
        waiting task of higher priority would wait, or that fit free cores elsewhere which no
        waiting task can use."""
        core = self.core
        self.review = False
        stealing, steals = self.stealing, self.steals
        free = [(k, len(core.buckets[k])) for k in core.keys]  # (free cores, GPUs, until), count
        top = -min(core.head_of.values())[0] if core.head_of else None  # the highest waiting priority
        self.queued_min_prio = INF
        for node in list(self.queued_on):
            if not node.queued:
                self.queued_on.discard(node)
                continue
            blocked = node.draining or node.reserved_by is not None or node.held is not None
            for task in reversed(node.queued):  # the last queued starts last: take it first
                if task.id in stealing:
                    continue
                if not blocked and (top is None or task.prio >= top):
                    self.queued_min_prio = min(self.queued_min_prio, task.prio)
                    need = now if task.wt is None else now + task.wt
                    slot = next((i for i, (k, c) in enumerate(free) if c and k[0] >= task.cores and k[2] >= need), None)
                    if slot is None:
                        continue
                    k, c = free[slot]
                    free[slot] = (k, c - 1)  # one steal per free node slot (enough for 1-core tasks)
                stealing.add(task.id)
                steals.append((task.id, node.name))

    def check_invariants(self, check: Callable[[bool, str], None]) -> None:
        """Queued tasks are where their node says, and a node with queued tasks is full."""
        core = self.core
        total = 0
        for name, n in core.nodes.items():
            total += len(n.queued)
            check(not n.queued or n.free_cores == 0, f"node {name!r} has queued tasks and free cores")
            check(len(n.queued) <= self.depth, f"node {name!r} queues {len(n.queued)} tasks")
            for t in n.queued:
                good = t.state == QUEUED and t.nodes == [n] and core.tasks.get(t.id) is t and not t.gpus
                check(good, f"node {name!r} queues task {t.id!r} wrongly")
        check(total == self.n_queued, f"{total} queued tasks on nodes, {self.n_queued} counted")
        stale = [t for t in self.stealing if getattr(core.tasks.get(t), "state", None) != QUEUED]
        check(not stale, f"tasks {stale} are being taken back but are not queued")
