"""The dispatcher: between the placer (pure, packing/) and Dask's scheduler. It keeps the
node-workers' configs, feeds runnable balsam tasks to the placer, turns its assignments into
Dask transitions (worker restriction, dispatch annotation, core resource) and takes queued
tasks back. Placement runs on the next turn of the event loop, never inside a hook."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from typing import Any

from balsam_dask.packing.placer import NodeInfo, Placer
from balsam_dask.protocol import (
    CORES_RESOURCE,
    DISPATCH_ANNOTATION,
    KILL_OP,
    RESCHEDULE_REASON,
    STREAM_INTERVAL,
    Dispatch,
    LostReason,
    NodeConfig,
)
from balsam_dask.scheduler.pausing import Pauser
from balsam_dask.scheduler.recorder import Recorder, Track
from balsam_dask.store.states import State

log = logging.getLogger(__name__)

#: A worker address that never exists: a task restricted to it waits in ``no-worker``.
HOLD = "balsam-hold://placement"
#: The worker restriction of a held task, shared by all of them (Dask only reads a task's
#: restrictions; a set per task is one more object for every full garbage collection).
HELD: frozenset[str] = frozenset({HOLD})
#: Stimulus id prefix of our requests to take a queued task back from its worker.
UNQUEUE = "balsam-unqueue-"
#: Worker task states in which a steal request takes the task back (it had not started).
GIVEN_BACK = frozenset({"ready", "constrained", "waiting", None})
#: In the message of a prefetched task's RUNNING event: when it was queued on its node.
QUEUED_AT = "queued_at="


class Dispatcher:
    def __init__(self, placer: Placer, recorder: Recorder, scheduler: Any, errors: list[str]) -> None:
        self.placer = placer
        self.recorder = recorder
        self.scheduler = scheduler
        self.pauser = Pauser(scheduler)
        self.errors = errors  # shared with the plugin: shown by balsam_status
        self.nodes: dict[str, NodeConfig] = {}  # worker address -> node config
        self.placed: set[str] = set()  # node-workers known to the placer
        self.names: dict[str, str] = {}  # worker address -> its node's name (kept after it leaves)
        self.lost: dict[Hashable, LostReason] = {}  # key -> why its running attempt was lost
        self.dispatched: dict[Hashable, tuple[str, str | None]] = {}  # key -> (hosts, message)
        self.queued: dict[Hashable, tuple[str, str, str | None]] = {}  # prefetched: key -> (worker, hosts, msg)
        self.gangs: dict[int, tuple[str, ...]] = {}  # running gang task id -> its nodes, leader first
        self.steal_fallback: Any = None  # Dask's steal-response handler (work stealing)
        self.long_running_fallback: Any = None  # Dask's long-running handler (a task seceded)
        self.bundler: Any = None  # bundled tasks (scheduler/bundles.py): placed here, sent by it
        self._only: dict[str, frozenset[str]] = {}  # worker -> the restriction to it, shared by its tasks
        self._order = 0  # dispatch order: the Dask priority of balsam tasks on their worker
        self._pending = False

    # ------------------------------------------------------------------ tasks
    def submit(self, track: Track, ts: Any = None) -> None:
        """A runnable balsam task (Dask parked it in ``no-worker``): place it, next to its
        inputs if it fits there (``ts``: its Dask task)."""
        assert track.spec is not None
        near = self.near(ts) if ts is not None and ts.dependencies else None
        self.placer.submit(track.id, track.spec.resources, track.spec.priority, near)
        self.want()

    def near(self, ts: Any) -> str | None:
        """The node-worker holding the most bytes of the task's inputs: where Dask would run it
        (no transfer), and where the placer puts it if it fits there."""
        held: dict[str, int] = {}
        placed = self.placed
        for dts in ts.dependencies:
            if dts.who_has:
                nbytes = dts.get_nbytes()
                for ws in dts.who_has:
                    if ws.address in placed:
                        held[ws.address] = held.get(ws.address, 0) + nbytes
        return max(held, key=held.__getitem__, default=None)

    def attempt_ended(self, track: Track, ts: Any, finish: str) -> None:
        """A balsam task left ``processing`` (or ``no-worker``): free its placement; the next
        attempt, if any, goes through placement again."""
        self.gangs.pop(track.id, None)
        if self.placer.cancel(track.id):
            self.promoted()
            self.want()
        if ts is not None and finish in ("released", "waiting"):
            ts.worker_restrictions = HELD

    def promoted(self) -> None:
        """Record the start of queued tasks the placer promoted (their node freed cores)."""
        for task_id in self.placer.take_started():
            track = self.recorder.by_id.get(task_id)  # type: ignore[call-overload]
            info = self.queued.pop(track.key, None) if track is not None else None
            if info is not None:
                self.recorder.move(track, State.RUNNING, worker=info[0], hosts=info[1], message=info[2])

    def want(self) -> None:
        """Place on the next turn of the event loop (once, however often asked)."""
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self.dispatch)

    def dispatch(self) -> None:
        self._pending = False
        s = self.scheduler
        now = time.time()
        try:
            assignments = self.placer.schedule(now)
        except Exception as e:  # a placer bug must be visible, not silent
            self.errors.append(f"placer.schedule: {type(e).__name__}: {e}")
            log.exception("balsam_dask: placement failed")
            return
        self._send_steals(now)
        serial: dict[Hashable, str] = {}
        dask_priority: dict[Hashable, Any] = {}  # tasks sent with their dispatch order as priority
        bundler = self.bundler
        for a in assignments:
            track = self.recorder.by_id.get(a.task_id)  # type: ignore[call-overload]
            if track is not None and track.bundled:
                bundler.assign(track, a, now)
                continue
            ts = s.tasks.get(track.key) if track is not None else None
            if track is None or ts is None or ts.state != "no-worker" or any(n not in s.workers for n in a.nodes):
                self.placer.cancel(a.task_id)
                self.promoted()
                if track is not None and ts is not None and ts.state == "no-worker" and track.spec is not None:
                    self.placer.submit(track.id, track.spec.resources, track.spec.priority)
                continue
            leader = a.nodes[0]
            only = self._only.get(leader)
            if only is None:
                only = self._only[leader] = frozenset({leader})
            ts.worker_restrictions = only
            hosts = tuple([self.nodes[n].host or n for n in a.nodes if n in self.nodes])
            # tuples of strings, not lists: the garbage collector stops tracking them (and then
            # this dict) once they have survived a collection, so a dispatched task adds no
            # object to walk in every later full collection of the scheduler
            dispatch: Dispatch = {"attempt": track.attempt + 1, "gpus": a.gpu_ids, "hosts": hosts,
                                  "workers": a.nodes, "task_id": track.id}  # fmt: skip
            ts.annotations = {**(ts.annotations or {}), DISPATCH_ANNOTATION: dispatch}
            notes = [f"gpus={','.join(a.gpu_ids)}"] if a.gpu_ids else []
            if len(a.nodes) > 1:
                notes.append(f"workers={','.join(self.names.get(n, n) for n in a.nodes)}")
            if a.queued:  # the RUNNING event tells how long it waited on its node
                self.queued[track.key] = (leader, ",".join(hosts), " ".join([*notes, f"{QUEUED_AT}{now:.6f}"]))
            else:
                self.dispatched[track.key] = (",".join(hosts), " ".join(notes) or None)
            if len(a.nodes) == 1 and CORES_RESOURCE in s.workers[leader].resources:
                # The worker starts it only when its cores are free, and its queued tasks in
                # dispatch order (the placer's promotion order; among equal priorities Dask's
                # worker would start the newest first).
                ts.resource_restrictions = {CORES_RESOURCE: track.spec.resources.cores}
                self._order += 1
                dask_priority[track.key] = ts.priority  # the scheduler keeps Dask's (below)
                ts.priority = (0, 0, self._order)
            if len(a.nodes) > 1:
                self.gangs[track.id] = a.nodes
                with self.pauser.running(leader):  # the leader is held (paused) for the gang
                    s.transitions({track.key: "processing"}, stimulus_id=f"balsam-dispatch-{now}")
                self._check_dispatched(track.key)
            else:
                serial[track.key] = "processing"
        if bundler is not None and bundler.outbox:
            bundler.send()
        self._sync_holds()  # before the serial tasks: a node a gang just left takes them
        if serial:
            # Dask pops recommendations last-in first: reversed, the compute-task messages
            # leave in placement order, so a worker meets its tasks in the placer's order
            s.transitions(dict(reversed(serial.items())), stimulus_id=f"balsam-dispatch-{now}")
            for key in serial:
                self._check_dispatched(key)
        for key, priority in dask_priority.items():  # the compute-task messages took the dispatch order
            ts = s.tasks.get(key)
            if ts is not None:
                ts.priority = priority
        if s.validate:
            self.placer.check_invariants()

    def _check_dispatched(self, key: Hashable) -> None:
        """A dispatched task that stayed in no-worker (its worker went away): place it again."""
        ts = self.scheduler.tasks.get(key)
        track = self.recorder.tracks.get(key)
        if ts is not None and ts.state == "no-worker" and track is not None and track.spec is not None:
            ts.worker_restrictions = HELD
            self.dispatched.pop(key, None)
            self.queued.pop(key, None)
            self.gangs.pop(track.id, None)
            self.placer.cancel(track.id)
            self.promoted()
            self.submit(track)

    def _sync_holds(self) -> None:
        """Nodes reserved for, or running, a gang take no plain Dask task either."""
        held = {n for nodes in self.placer.reservations().values() for n in nodes}
        held.update(n for nodes in self.gangs.values() for n in nodes)
        if held or self.pauser.held:
            self.pauser.sync(held)

    # ------------------------------------------------------------------ taking queued tasks back
    def on_steal_response(self, key: Hashable = None, state: str | None = None, stimulus_id: str = "",
                          worker: str | None = None, **kwargs: Any) -> None:  # fmt: skip
        """The scheduler's ``steal-response`` handler: ours, or Dask's work stealing's."""
        if not stimulus_id.startswith(UNQUEUE):
            if self.steal_fallback is not None:
                self.steal_fallback(key=key, state=state, stimulus_id=stimulus_id, worker=worker, **kwargs)
            return
        track = self.recorder.tracks.get(key)
        if track is None:
            return
        if state in GIVEN_BACK:  # the worker dropped it: place it again
            self.scheduler._reschedule(key, worker=worker, stimulus_id=stimulus_id)
        else:  # it had started there
            self.placer.steal_refused(track.id)
        self.want()

    def on_long_running(self, key: Hashable = None, worker: str | None = None, run_id: int | None = None,
                        **kwargs: Any) -> None:  # fmt: skip
        """The scheduler's ``long-running`` handler: a task seceded from its worker's thread
        pool. Dask's handling first, then a balsam task's cores are free for the placer."""
        if self.long_running_fallback is not None:
            self.long_running_fallback(key=key, worker=worker, run_id=run_id, **kwargs)
        track = self.recorder.tracks.get(key)
        ts = self.scheduler.tasks.get(key)
        if track is None or track.spec is None or track.dask_placed or ts is None or ts.processing_on is None:
            return
        if ts.processing_on.address == worker and ts.run_id == run_id and self.placer.release_cores(track.id):
            self.promoted()
            self.want()

    def _send_steals(self, now: float) -> None:
        bundled = []
        for task_id, node in self.placer.take_steals():
            track = self.recorder.by_id.get(task_id)  # type: ignore[call-overload]
            if track is not None and track.bundled:
                bundled.append((task_id, node))
                continue
            if track is None or node not in self.scheduler.stream_comms:
                self.placer.steal_refused(task_id)
                continue
            msg = {"op": "steal-request", "key": track.key, "stimulus_id": f"{UNQUEUE}{now}"}
            self.scheduler.worker_send(node, msg)
        if bundled:
            self.bundler.unqueue(bundled)

    # ------------------------------------------------------------------ nodes
    def node_added(self, worker: str, config: NodeConfig, running: bool) -> None:
        self.nodes[worker] = config
        self.names[worker] = config.name
        if running:
            self.node_running(worker)

    def node_running(self, worker: str) -> None:
        cfg = self.nodes.get(worker)
        if cfg is None:
            return
        stream = self.scheduler.stream_comms.get(worker)
        if stream is not None:  # dispatch one task at a time without Dask's 5 ms batching delay
            stream.interval = STREAM_INTERVAL
        if worker in self.placed:
            self.placer.set_draining(worker, False)
        else:
            ws = self.scheduler.workers.get(worker)
            gated = ws is not None and CORES_RESOURCE in ws.resources  # else it would run queued tasks at once
            self.placer.add_node(NodeInfo(worker, cfg.alloc_id, cfg.cores, cfg.gpus, cfg.end_time, gated))
            self.placed.add(worker)
        self.want()

    def node_draining(self, worker: str) -> None:
        """The worker paused itself (memory): place nothing new on it."""
        if worker in self.placed and worker not in self.pauser.held:
            self.placer.set_draining(worker, True)

    def worker_removed(self, worker: str) -> None:
        self.nodes.pop(worker, None)
        self._only.pop(worker, None)
        self.pauser.forget(worker)
        if worker in self.placed:
            self.node_lost(worker)

    def why_lost(self, worker: str) -> LostReason:
        """Why a worker's running tasks were lost. As in Balsam, the tasks of a batch
        node-worker that went away (walltime, ``scancel``/``qdel``, its node lost) are
        recorded RUN_TIMEOUT and run again in another allocation; an emulated local node
        that dies loses its attempt (RESTART_READY)."""
        cfg = self.nodes.get(worker)
        if cfg is None:
            return LostReason(f"attempt lost: worker {worker} left")
        if cfg.end_time is not None and time.time() >= cfg.end_time - 5:
            return LostReason(f"allocation {cfg.alloc_id} reached its end on {cfg.name}", walltime=True)
        if not cfg.alloc_id.startswith(("local-", "unmanaged")):
            return LostReason(f"allocation {cfg.alloc_id} ended on {cfg.name} (job cancelled or node lost)",
                              walltime=True)  # fmt: skip
        return LostReason(f"attempt lost: worker {cfg.name} left ({worker})")

    def node_lost(self, worker: str) -> None:
        """Free a node's placement before its tasks come back through Dask."""
        self.placed.discard(worker)
        lost = self.placer.remove_node(worker)
        if self.bundler is not None:  # its bundled tasks come back through no one: place them again
            self.bundler.node_lost(worker, self.why_lost(worker))
        for task_id in lost:
            nodes = self.gangs.pop(task_id, None) if isinstance(task_id, int) else None
            track = self.recorder.by_id.get(task_id) if isinstance(task_id, int) else None
            if nodes and track is not None and nodes[0] != worker:
                # a follower of a running gang is gone: stop the attempt on the leader; the
                # worker hands the task back (Reschedule) and it is placed again
                self.lost[track.key] = LostReason(f"attempt lost: gang node {self.names.get(worker, worker)} left")
                if nodes[0] in self.scheduler.workers:
                    self.scheduler.worker_send(
                        nodes[0], {"op": KILL_OP, "keys": [str(track.key)], "reason": RESCHEDULE_REASON}
                    )
        self.want()
