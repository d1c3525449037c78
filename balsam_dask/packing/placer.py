"""``Placer``: which task runs on which node-worker, with exact accounting. Pure (no Dask, no I/O).

Used by the scheduler plugin and the simulator (benchmarks/packing_sim.py). A *node* is one
node-worker of an allocation; a *task* is a :class:`~balsam_dask.spec.Resources` request with a
priority and an arrival order. The placer composes its components, each owning its state:
serial placement (serial.py), gang reservations (gangs.py), holds for starving serial tasks
(holds.py) and prefetch on full nodes (prefetch.py), over the shared records and free-capacity
index (core.py). docs/ARCHITECTURE.md explains the policy.
"""

from __future__ import annotations

from collections.abc import Callable

from balsam_dask import validate
from balsam_dask.errors import InvalidSpec, UnknownTask
from balsam_dask.packing.core import PlacerCore
from balsam_dask.packing.gangs import Gangs
from balsam_dask.packing.holds import HOLD_AFTER, Holds
from balsam_dask.packing.prefetch import Prefetch
from balsam_dask.packing.records import (
    INF,
    QUEUED,
    RUNNING,
    WAITING,
    Assignment,
    Node,
    NodeInfo,
    NodeStatus,
    PlacementError,
    PlacementInvariantError,
    Task,
    TaskId,
    order,
    per_alloc,
)
from balsam_dask.packing.serial import SerialPlacement
from balsam_dask.spec import Resources, walltime_class


class Placer:
    """Exact, walltime-aware placement of serial tasks and MPI gangs on node-workers.

    ``backfill``: reserved idle nodes take tasks that end before the gang's promised start;
    ``hold_after``: seconds before a passed serial task gets a node held (None: never);
    ``prefetch``: tasks queued per full node while the backlog is deep (0: none)."""

    def __init__(self, backfill: bool = False, hold_after: float | None = HOLD_AFTER, prefetch: int = 0) -> None:
        self.core = PlacerCore(backfill)
        self.holds = Holds(self.core, hold_after)
        self.gangs = Gangs(self.core, self.holds)
        self.prefetch = Prefetch(self.core, self.gangs, self.holds, prefetch)
        self.serial = SerialPlacement(self.core, self.holds, self.prefetch)
        # the prefetch queue's API, as the plugin uses it
        self.take_started = self.prefetch.take_started
        self.take_steals = self.prefetch.take_steals
        self.steal_refused = self.prefetch.steal_refused

    # ------------------------------------------------------------------ nodes
    def add_node(self, info: NodeInfo) -> None:
        core = self.core
        if info.name in core.nodes:
            raise PlacementError(f"node {info.name!r} is already known; remove_node({info.name!r}) first")
        node = Node(info, core.seq)
        core.seq += 1
        core.nodes[info.name] = core.by_idx[node.idx] = node
        core.alloc_nodes[node.alloc] = core.alloc_nodes.get(node.alloc, 0) + 1
        core.rekey(node)
        core.version += 1

    def remove_node(self, name: str) -> list[TaskId]:
        """Forget a node; returns the tasks whose attempt was lost (a gang's id once).

        Lost tasks are forgotten: submit them again to retry them."""
        core = self.core
        node = core.node(name)
        if node.reserved_by is not None:
            self.gangs.release(node.reserved_by)
        self.holds.unhold(node, rekey=False)
        self.prefetch.drop_node(node)
        lost: list[Task] = [node.gang] if node.gang is not None else list(node.running)
        for task in lost:
            self._free(task)
            core.drop(task)
        core.set_key(node, None)
        del core.nodes[name], core.by_idx[node.idx]
        if not node.draining:
            core.alloc_dec(node.alloc)
        core.version += 1
        return [t.id for t in lost]

    def set_draining(self, name: str, draining: bool = True) -> None:
        """A draining node takes no new task (its allocation is about to end)."""
        core = self.core
        node = core.node(name)
        if node.draining == draining:
            return
        node.draining = draining
        if draining:
            self.prefetch.review = bool(node.queued)
            core.alloc_dec(node.alloc)
            if node.reserved_by is not None:
                self.gangs.release(node.reserved_by)
            self.holds.unhold(node)
        else:
            core.alloc_nodes[node.alloc] = core.alloc_nodes.get(node.alloc, 0) + 1
        core.rekey(node)
        core.version += 1

    # ------------------------------------------------------------------ tasks
    def submit(self, task_id: TaskId, resources: Resources, priority: int = 0, near: str | None = None) -> None:
        """Queue a task; a task that fits no present node waits (allocations may come).

        ``near``: the node a serial task should run on if it fits there when its turn comes
        (where its inputs are, as Dask places a task); else it goes where it fits best."""
        if not isinstance(resources, Resources):
            raise InvalidSpec(f"resources={resources!r} is invalid: pass balsam_dask.spec.Resources(...)")
        validate.integer("priority", priority, "priority=10")
        core = self.core
        if task_id in core.tasks:
            raise PlacementError(f"task {task_id!r} is already submitted; finished() or cancel() it first")
        core.seq += 1
        task = core.tasks[task_id] = Task(task_id, resources, priority, core.seq, walltime_class(resources.walltime))
        if self.prefetch.n_queued and priority > self.prefetch.queued_min_prio:
            self.prefetch.review = True  # queued tasks of lower priority go back: this one runs first
        if task.k > 1:
            self.gangs.waiting[task_id] = task
            core.version += 1
        else:
            if near is not None:
                task.near = core.nodes.get(near)
            self.serial.submit(task)

    def cancel(self, task_id: TaskId) -> bool:
        """Withdraw a waiting or running task; returns False if the task is unknown."""
        task = self.core.tasks.get(task_id)
        if task is None:
            return False
        if task.state == RUNNING:
            self._free(task)
        elif task.state == QUEUED:
            self.prefetch.withdraw(task)
        elif task.k > 1:
            self.gangs.withdraw(task)
        else:
            self.core.n_serial -= 1  # its queue entry is skipped later
            self.holds.forget(task_id)
        self.core.drop(task)
        return True

    def finished(self, task_id: TaskId) -> None:
        """The running task ended (any outcome): free its cores, GPUs or nodes."""
        task = self.core.tasks.get(task_id)
        if task is None:
            raise UnknownTask(f"task {task_id!r} is not known to the placer")
        if task.state != RUNNING:
            raise PlacementError(f"task {task_id!r} is waiting, not running: use cancel({task_id!r})")
        self._free(task)
        self.core.drop(task)

    def release_cores(self, task_id: TaskId) -> bool:
        """A running serial task gives its cores back but runs on (it seceded from its worker's
        thread pool, as Dask's ``secede()`` frees a thread): other tasks may use them; its GPUs
        stay with it and it still keeps its node from being released. False if it is not a
        running serial task that holds cores."""
        task = self.core.tasks.get(task_id)
        if task is None or task.state != RUNNING or task.k > 1 or not task.cores:
            return False
        node = task.nodes[0]
        node.free_cores += task.cores
        task.cores = 0  # its end frees no cores
        node.est_dirty = True
        if node.queued:
            self.prefetch.promote(node)
        self.core.rekey(node)
        if node.held is not None:
            self.holds.check(node)
        return True

    def _free(self, task: Task) -> None:
        """Give a running task's cores, GPUs or whole nodes back."""
        core = self.core
        if task.k > 1:
            for node in task.nodes:
                node.gang = None
                node.free_cores, node.free_gpus = node.cores, list(node.all_gpus)
                self.gangs.idle(node)
            core.version += 1
            return
        node = task.nodes[0]
        del node.running[task]
        node.free_cores += task.cores
        if task.gpu_ids:
            node.free_gpus.extend(task.gpu_ids)
            node.free_gpus.sort(key=int)
        node.est_dirty = True
        if node.queued:
            self.prefetch.promote(node)  # the worker starts them now: so does the placer
        if not node.running:
            self.gangs.idle(node)
        else:
            core.rekey(node)
        if node.held is not None:
            self.holds.check(node)

    # ------------------------------------------------------------------ scheduling
    def schedule(self, now: float) -> list[Assignment]:
        """Place what can start now; returns the new assignments."""
        core, holds, prefetch = self.core, self.holds, self.prefetch
        out: list[Assignment] = []
        if holds.ready:
            holds.start_held(now, out)
        if self.gangs.waiting:
            self.gangs.schedule(now, out)
        if core.n_serial and core.keys and self.serial.place(now, out) and core.n_serial and core.keys:
            self.serial.place(now, out)  # nodes held for tasks that started elsewhere take tasks again
        if holds.passed_since and holds.hold_after is not None:
            holds.hold_starving(now)
            if holds.ready:
                holds.start_held(now, out)
        if prefetch.refill:
            prefetch.fill(now, out)
        if prefetch.wants_review():
            prefetch.review_queues(now)
        return out

    # ------------------------------------------------------------------ queries
    def node(self, name: str) -> NodeStatus:
        n = self.core.node(name)
        running = (n.gang.id,) if n.gang is not None else tuple(t.id for t in n.running)
        reserved = n.reserved_by.task.id if n.reserved_by is not None else None
        end = None if n.end == INF else n.end
        return NodeStatus(n.name, n.alloc, n.cores, n.free_cores, n.gpus, tuple(n.free_gpus), end,
                          n.draining, reserved, running, tuple(t.id for t in n.queued))  # fmt: skip

    def usage(self, name: str) -> tuple[tuple[TaskId, int, int], ...]:
        """(task, cores, GPUs) of each task running on the node now; a gang holds it whole."""
        n = self.core.node(name)
        if n.gang is not None:
            return ((n.gang.id, n.cores, n.gpus),)
        return tuple((t.id, t.cores, len(t.gpu_ids)) for t in n.running)

    def nodes(self) -> list[str]:
        return list(self.core.nodes)

    def running(self) -> dict[TaskId, Assignment]:
        tasks = (t for t in self.core.tasks.values() if t.state == RUNNING)
        return {t.id: Assignment(t.id, tuple(n.name for n in t.nodes), t.gpu_ids) for t in tasks}

    def waiting(self) -> list[TaskId]:
        """Waiting task ids in priority, then arrival, order."""
        return [t.id for t in sorted((t for t in self.core.tasks.values() if t.state == WAITING), key=order)]

    def reservations(self) -> dict[TaskId, tuple[str, ...]]:
        """Gangs holding reserved nodes (some of them may still be draining)."""
        return {tid: tuple(n.name for n in r.nodes) for tid, r in self.gangs.res.items()}

    def held(self) -> dict[TaskId, str]:
        """Serial tasks with a node held for them: task -> node."""
        return {tid: n.name for tid, n in self.holds.of.items()}

    def state(self, task_id: TaskId) -> str | None:
        """'waiting', 'queued' (prefetched on a node), 'running' or None (unknown, finished, cancelled or lost)."""
        task = self.core.tasks.get(task_id)
        return None if task is None else {RUNNING: "running", QUEUED: "queued"}.get(task.state, "waiting")

    def releasable(self, name: str) -> bool:
        """Nothing runs or waits on the node and no gang or starving task is kept for it:
        giving it back to the batch system loses nothing."""
        n = self.core.nodes.get(name)
        return (
            n is not None and n.gang is None and not n.running and not n.queued
            and n.reserved_by is None and n.held is None
        )  # fmt: skip

    def backlog_counts(self) -> dict[tuple[int, int, int, float | None], tuple[int, int]]:
        """(nodes, cores, gpus, walltime class) -> (waiting, running), for the sizing policy."""
        out: dict[tuple[int, int, int, float | None], tuple[int, int]] = {}
        for t in self.core.tasks.values():
            shape = (t.k, t.res.cores, t.gpus, t.wt)  # the asked cores (a seceded task holds none)
            w, r = out.get(shape, (0, 0))
            out[shape] = (w, r + 1) if t.state == RUNNING else (w + 1, r)
        return out

    def max_gang_width(self) -> int:
        """Nodes of the largest allocation (draining nodes excluded): the widest runnable gang."""
        return max(self.core.alloc_nodes.values(), default=0)

    def unplaceable(self, task_id: TaskId, now: float | None = None) -> str | None:
        """Why a waiting task cannot run on the present nodes, or None if it can (now or later).

        Sizes are always checked; remaining allocation time too when ``now`` is given. New
        allocations may still come, so this is advice for the user, never a reason to fail.
        """
        task = self.core.tasks.get(task_id)
        if task is None:
            raise UnknownTask(f"task {task_id!r} is not known to the placer")
        nodes = [n for n in self.core.nodes.values() if not n.draining]
        if task.state in (RUNNING, QUEUED):
            return None
        if not nodes:
            return "no node-workers are connected yet"
        fit = [n for n in nodes if n.cores >= task.cores and n.gpus >= task.gpus]
        if not fit:
            big = max(nodes, key=lambda n: (n.cores, n.gpus))
            return (f"needs {task.cores} cores and {task.gpus} GPUs per node; the largest node has "
                    f"{big.cores} cores and {big.gpus} GPUs")  # fmt: skip
        widest = max(per_alloc(fit).values())
        if widest < task.k:
            return f"needs {task.k} nodes of one allocation; the widest allocation has {widest}"
        if now is not None and task.wt is not None:
            timely = per_alloc(n for n in fit if n.end >= now + task.wt)
            if max(timely.values(), default=0) < task.k:
                left = max(max(n.end for n in fit) - now, 0.0)
                return (f"needs walltime {task.wt:g} s on {task.k} node(s) of one allocation; "
                        f"the longest remaining allocation time is {left:g} s")  # fmt: skip
        return None

    # ------------------------------------------------------------------ invariants
    def check_invariants(self) -> None:
        """Raise :class:`PlacementInvariantError` if any accounting is inconsistent."""

        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise PlacementInvariantError(msg)

        self._node_invariants(check)
        self._gang_invariants(check)
        core, holds = self.core, self.holds
        check(
            sum(core.alloc_nodes.values()) == sum(1 for n in core.nodes.values() if not n.draining),
            "per-allocation node counts do not add up",
        )
        check(
            len(core.keys) == len(core.buckets) == len(set(core.keys))
            and sum(len(b) for b in core.buckets.values()) == sum(1 for n in core.nodes.values() if n.key),
            "the free-capacity index does not match the nodes",
        )
        held = {n.held.id: n for n in core.nodes.values() if n.held is not None}
        check(held == holds.of, f"held nodes {list(held)} do not match the holds {list(holds.of)}")
        for tid, n in held.items():
            ht = n.held
            ok = ht is not None and core.tasks.get(tid) is ht and ht.state == WAITING and ht.k == 1 and n.gang is None
            check(ok and n.reserved_by is None, f"node {n.name!r} holds {tid!r}, which cannot use it")
        check(core.n_serial == sum(1 for t in core.tasks.values() if t.k == 1 and t.state == WAITING),
              "waiting serial count is wrong")  # fmt: skip
        self.prefetch.check_invariants(check)

    def _node_invariants(self, check: Callable[[bool, str], None]) -> None:
        core = self.core
        for name, n in core.nodes.items():
            check(n.name == name and core.by_idx.get(n.idx) is n, f"node {name!r} indexed wrongly")
            check(0 <= n.free_cores <= n.cores, f"node {name!r} has {n.free_cores} free of {n.cores} cores")
            check(n.key == core.want(n), f"node {name!r} index key {n.key} is not {core.want(n)}")
            check(n.key is None or n.idx in core.buckets.get(n.key, ()), f"node {name!r} not in its bucket")
            r = n.reserved_by
            check(r is None or (self.gangs.res.get(r.task.id) is r and n in r.nodes), f"node {name!r} bad reservation")
            if n.gang is not None:
                g = n.gang
                check(not n.running and not n.free_cores and not n.free_gpus, f"gang node {name!r} shared")
                check(g.state == RUNNING and n in g.nodes, f"node {name!r} names gang {g.id!r} not on it")
                continue
            check(sum(t.cores for t in n.running) + n.free_cores == n.cores, f"node {name!r} cores mismatch")
            ids = sorted([g for t in n.running for g in t.gpu_ids] + n.free_gpus)
            check(ids == sorted(n.all_gpus), f"node {name!r}: GPU ids {ids} are not {n.all_gpus} once each")
            for t in n.running:
                ok = t.state == RUNNING and t.nodes == [n] and core.tasks.get(t.id) is t
                check(ok, f"node {name!r} lists task {t.id!r} that does not run there")

    def _gang_invariants(self, check: Callable[[bool, str], None]) -> None:
        core, gangs = self.core, self.gangs
        holders: dict[str, Task] = {}
        for t in core.tasks.values():
            if t.state != RUNNING or t.k == 1:
                continue
            check(len(t.nodes) == t.k and len({n.alloc for n in t.nodes}) == 1, f"gang {t.id!r} nodes wrong")
            for n in t.nodes:
                check(holders.setdefault(n.name, t) is t, f"node {n.name!r} is held by two gangs")
                check(core.nodes.get(n.name) is n and n.gang is t, f"gang {t.id!r} on a node it lacks")
        for tid, r in gangs.res.items():
            check(r.task.state == WAITING and gangs.waiting.get(tid) is r.task, f"reservation {tid!r} stale")
            check(len(r.nodes) <= r.task.k, f"reservation {tid!r} holds more than {r.task.k} nodes")
            check(all(n.alloc == r.alloc_id and n.reserved_by is r for n in r.nodes), f"reservation {tid!r}")
            busy = sum(1 for n in r.nodes if n.running or n.gang is not None)
            check(r.busy == busy, f"reservation {tid!r} counts {r.busy} busy nodes, not {busy}")
