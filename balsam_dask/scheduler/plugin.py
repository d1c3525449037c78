"""``BalsamPlugin``: the scheduler plugin that records every task and places balsam tasks.

Recording: every transition of every task (plain Dask tasks too) goes to the recorder, which
queues store operations to the batching writer; the event loop never waits on the database.

Placement: a task submitted with a balsam spec (annotation ``balsam``) is *held*: its worker
restriction names no worker, so Dask parks it in ``no-worker`` when it is runnable. The
plugin then submits it to the pure :class:`~balsam_dask.packing.placement.Placer`, which knows
every node-worker's free cores, GPUs and remaining allocation time, and dispatches what it
places by restricting the task to the chosen worker and transitioning it to ``processing``
(deferred to the next loop iteration, never from inside a transition hook). The dispatch
decision (attempt, GPU ids, hosts) travels to the worker in the task's annotations.

Prefetch (``prefetch``, default 2): while the backlog is deep, a full node also gets a few
*queued* tasks (``packing/placement_prefetch``), so it starts its next task without a round
trip through the scheduler. Every dispatched serial task asks for its cores as the worker
resource ``BALSAM_CORES``, so the worker starts a queued task exactly when the placer
promotes it; RUNNING is recorded then, not at dispatch. Queued tasks are taken back with
Dask's own steal request (the worker gives a task back only if it has not started it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Hashable
from functools import partial
from typing import Any

from dask._task_spec import Task
from distributed.diagnostics.plugin import SchedulerPlugin

from balsam_dask.errors import StoreUnavailable
from balsam_dask.function import restored
from balsam_dask.packing.holds import HOLD_AFTER
from balsam_dask.packing.placer import NodeInfo, Placer
from balsam_dask.payload import dump_payload
from balsam_dask.protocol import (
    CORES_RESOURCE,
    DISPATCH_ANNOTATION,
    EXTRA_KEY,
    KILL_OP,
    PARENT_ANNOTATION,
    RESCHEDULE_REASON,
    SPEC_ANNOTATION,
    STREAM_INTERVAL,
    TOPIC,
    NodeConfig,
    wire_spec,
)
from balsam_dask.scheduler.pausing import Pauser, is_ours
from balsam_dask.scheduler.recorder import FINISHED, Recorder, Track
from balsam_dask.spec import TaskSpec
from balsam_dask.store.api import Store
from balsam_dask.store.ops import AllocationWrite
from balsam_dask.store.procwriter import ProcessWriter
from balsam_dask.store.states import FINAL_STATES, State
from balsam_dask.store.writer import check_writer_options

log = logging.getLogger(__name__)

#: Messages of attempts that ended with their allocation (recorded as RUN_TIMEOUT).
TIMEOUT_PREFIX = "walltime: "
#: A worker address that never exists: a task restricted to it waits in ``no-worker``.
HOLD = "balsam-hold://placement"
#: The worker restriction of a held task, shared by all of them (Dask only reads a task's
#: restrictions; a set per task is one more object for every full garbage collection of the
#: scheduler to walk, and the scheduler keeps a finished task as long as its future lives).
HELD: frozenset[str] = frozenset({HOLD})
PLUGIN_NAME = "balsam-dask"
_CANCEL_STIMULI = ("cancel-key", "client-releases-keys")
#: The scheduler's RPC handlers the plugin adds, each as ``balsam_<name>`` (``_handle_<name>``).
_HANDLERS = ("info", "kill", "resume", "status", "flush", "declare_nodes")
#: Stimulus id prefix of our requests to take a queued task back from its worker.
_UNQUEUE = "balsam-unqueue-"
#: Worker task states in which a steal request takes the task back (it had not started).
_GIVEN_BACK = frozenset({"ready", "constrained", "waiting", None})
#: Queued tasks per full node while the backlog is deep (0: dispatch only onto free cores).
PREFETCH = 2
#: In the message of a prefetched task's RUNNING event: when it was queued on its node.
QUEUED_AT = "queued_at="


def parents_first(keys: list[Any], priority: dict[Any, tuple[int | float, ...]], tasks: dict[Any, Any]) -> list[Any]:
    """The keys of one update_graph in Dask's priority order (its order of execution), each
    after its dependencies among them. Dask hands them over dependents first (it walks the
    graph from the requested keys): in that order a task's parents had no id yet when it
    was recorded. In this order ids follow execution, so the store writes the rows of tasks
    that run together side by side (in hash order a batch of transitions touched pages all
    over the tables: ten times the bytes written per task)."""
    todo = set(keys)
    out: list[Any] = []
    get = tasks.get
    for key in sorted(keys, key=lambda k: priority.get(k) or ()):
        ts = get(key)
        if ts is None or not ts.dependencies:  # most tasks: no stack
            if key in todo:
                todo.discard(key)
                out.append(key)
            continue
        stack = [key]
        while stack:
            k = stack[-1]
            if k not in todo:
                stack.pop()
                continue
            ts = get(k)
            pending = [d.key for d in ts.dependencies if d.key in todo] if ts is not None else []
            if pending:  # a DAG: each key is pushed again only while a dependency is pending
                stack.extend(pending)
            else:
                todo.discard(k)
                out.append(k)
                stack.pop()
    return out


class BalsamPlugin(SchedulerPlugin):
    name = PLUGIN_NAME

    def __init__(
        self, store: str | None = None, *, writer_options: dict[str, Any] | None = None,
        poll_interval: float = 1.0, node_shapes: list[dict[str, int]] | None = None,
        max_nodes_per_allocation: int | None = None, writer_process: bool = True,
        hold_after: float | None = HOLD_AFTER, prefetch: int = PREFETCH, key_file: str | os.PathLike[str] | None = None,
    ) -> None:  # fmt: skip
        self.store_url = store
        self.key_file = key_file  # signs the store's pickles (store/signing.py); default: beside a SQLite store
        self.writer_options = check_writer_options(writer_options or {})
        self.writer_process = writer_process
        self.poll_interval = poll_interval
        self.declared_shapes = list(node_shapes or [])
        self.max_nodes_per_allocation = max_nodes_per_allocation
        self.scheduler: Any = None
        self.store: Store | None = None
        self.placer = Placer(hold_after=hold_after, prefetch=prefetch)  # bad values fail here, before any task
        self.nodes: dict[str, NodeConfig] = {}  # worker address -> node config
        self.placed: set[str] = set()  # node-workers known to the placer
        self._lost: dict[Hashable, str] = {}  # key -> why its running attempt was lost
        self._gangs: dict[int, tuple[str, ...]] = {}  # running gang task id -> its nodes, leader first
        self._sched_pending = False
        self._poll_task: asyncio.Task[None] | None = None
        self._resumed: dict[Hashable, tuple[int, str, int]] = {}
        self._resumed_data: set[Hashable] = set()  # finished parents re-entered as data: not new tasks
        self._dispatched: dict[Hashable, tuple[str, str | None]] = {}  # key -> (hosts, message)
        self._queued: dict[Hashable, tuple[str, str, str | None]] = {}  # prefetched: key -> (worker, hosts, message)
        self._steal_fallback: Any = None
        self._only: dict[str, frozenset[str]] = {}  # worker -> the restriction to it, shared by its tasks
        self._restoring: dict[Hashable, str] = {}  # finished tasks whose lost result comes from the store
        self._names: dict[str, str] = {}  # worker address -> its node's name (kept after it leaves)
        self._order = 0  # dispatch order: the Dask priority of balsam tasks on their worker
        self.errors: list[str] = []
        self.writer: Any = None
        self.close_error: str | None = None  # what the writer could not write when the plugin closed

    # ------------------------------------------------------------------ lifecycle
    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.pauser = Pauser(scheduler)
        loop = asyncio.get_running_loop()
        self.store = await loop.run_in_executor(
            None, partial(Store, self.store_url, kind="scheduler", key_file=self.key_file)
        )
        store = self.store
        await loop.run_in_executor(None, lambda: store.session_id)
        await loop.run_in_executor(None, store.signer.key)  # a key that cannot be made or trusted fails here
        if self.writer_process:  # the SQL work off the event loop's GIL, started at its first shipment
            self.writer = ProcessWriter(store, **self.writer_options)
        else:
            options = {k: v for k, v in self.writer_options.items() if k not in ("nice", "close_timeout")}
            self.writer = store.writer(**options)
        self.recorder = Recorder(self.writer.put, store.ids.next, self.writer.put_transition)
        self.recorder.names = self._names
        for name in _HANDLERS:
            scheduler.handlers[f"balsam_{name}"] = getattr(self, f"_handle_{name}")
        # answers to our requests for queued tasks come back as Dask's steal responses
        self._steal_fallback = scheduler.stream_handlers.get("steal-response")
        scheduler.stream_handlers["steal-response"] = self._on_steal_response
        self._poll_task = asyncio.create_task(self._poll())

    async def close(self) -> None:
        """Stop polling, write what is queued and leave the scheduler's handlers as ``start``
        found them (a plugin removed from a running scheduler leaves it bare Dask)."""
        if self._poll_task is not None:
            self._poll_task.cancel()
        s = self.scheduler
        if s is not None:
            for name in _HANDLERS:
                if getattr(s.handlers.get(f"balsam_{name}"), "__self__", None) is self:
                    del s.handlers[f"balsam_{name}"]
            if getattr(s.stream_handlers.get("steal-response"), "__self__", None) is self:
                if self._steal_fallback is None:
                    del s.stream_handlers["steal-response"]
                else:
                    s.stream_handlers["steal-response"] = self._steal_fallback
        loop = asyncio.get_running_loop()
        if self.writer is not None:  # None when start failed before the writer ran
            try:
                await loop.run_in_executor(None, self.writer.close)
            except StoreUnavailable as e:  # records lost: the cluster's close raises it (close_error)
                self.close_error = str(e)
                log.error("balsam_dask: %s", e)
        if self.store is not None:
            if self.close_error:  # the store cannot be written: do not wait on it again
                self.store.engine.dispose()
            else:
                await loop.run_in_executor(None, self.store.close)

    async def _poll(self) -> None:
        """Kill requests from the store (``balsam-dask kill``) and time-based placement."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                assert self.store is not None
                ids = await loop.run_in_executor(None, self.store.kill_requests, self.store.session_id)
                keys = [self.recorder.by_id[i].key for i in ids if i in self.recorder.by_id]
                keys = [k for k in keys if self.recorder.tracks[k].state not in FINAL_STATES]
                if keys:
                    self.kill(keys, reason="kill requested in the store")
                self._want_schedule()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep polling; the store may be briefly unavailable
                log.warning("balsam_dask: poll failed: %s", e)

    # ------------------------------------------------------------------ graph
    def update_graph(
        self, scheduler: Any, *, client: str, keys: set[Any], tasks: list[Any], annotations: dict[str, dict[Any, Any]],
        priority: dict[Any, tuple[int | float, ...]], stimulus_id: str, **kwargs: Any,
    ) -> None:  # fmt: skip
        # Dask moves the new tasks to their first states right after this hook, in the same
        # turn of the event loop: the writer ships nothing until then (writer.hold)
        self.writer.hold()
        try:
            asyncio.get_running_loop().call_soon(self.writer.release)
        except RuntimeError:  # called outside the event loop (a test driving the scheduler)
            self.writer.release()
        specs = annotations.get(SPEC_ANNOTATION, {})
        parents = annotations.get(PARENT_ANNOTATION, {})
        rec = self.recorder
        wired: dict[int, bytes] = {}  # one serialization per distinct spec (a map shares one)
        for key in parents_first(tasks, priority, scheduler.tasks):
            ts = scheduler.tasks.get(key)
            if ts is None or key in rec.tracks:
                continue
            spec = specs.get(key)
            if not isinstance(spec, TaskSpec):
                spec = None
            else:
                wire = wired.get(id(spec))
                if wire is None:
                    wire = wired[id(spec)] = wire_spec(spec)
                ts.annotations = {**(ts.annotations or {}), SPEC_ANNOTATION: wire}
                ts.worker_restrictions = HELD
                ts.host_restrictions = None
                ts.loose_restrictions = False
            if key in self._resumed_data:
                self._resumed_data.discard(key)
                continue
            resumed = self._resumed.pop(key, None)
            if resumed is not None:
                self._adopt(key, spec, *resumed)
                continue
            if ts.run_spec is None:
                continue
            deps = tuple(rec.tracks[d.key].id for d in ts.dependencies if d.key in rec.tracks)
            parent = parents.get(key)
            submitted_by = rec.tracks[parent].id if parent in rec.tracks else None
            payload = partial(dump_payload, spec, ts.run_spec) if spec is not None and spec.durable else None
            rec.new_task(key, spec, deps, payload, submitted_by)

    def _adopt(self, key: Hashable, spec: TaskSpec | None, task_id: int, state: str, attempt: int) -> None:
        track = self.recorder.adopt(key, task_id, state, attempt, spec)
        if state not in (State.CREATED, State.AWAITING_PARENTS, State.READY, State.RESTART_READY):
            self.recorder.move(track, State.RESTART_READY, message="resumed: the previous scheduler died")

    # ------------------------------------------------------------------ transitions
    def transition(self, key: Hashable, start: str, finish: str, *args: Any, stimulus_id: str = "",
                   **kwargs: Any) -> None:  # fmt: skip
        track = self.recorder.tracks.get(key)
        if track is None:
            return
        ts = self.scheduler.tasks.get(key)
        if self._restoring and key in self._restoring:
            self._restore_step(track, ts, finish, kwargs)
            return
        if finish == "waiting" and track.state == FINISHED and start == "released" and self._restorable(track):
            # a finished durable task whose result was lost with its worker: its result comes
            # back from the store (it must not run twice); held until its parents are back
            self._restoring[key] = f"result restored from the store (lost with {track.worker or 'its worker'})"
            if ts is not None:
                ts.worker_restrictions = HELD
            return
        worker = hosts = note = None
        deps_pending = False
        if finish == "processing":
            if ts is not None and ts.processing_on is not None:
                worker = ts.processing_on.address
            if self._dispatched:
                hosts, note = self._dispatched.pop(key, (None, None))
        elif finish == "memory":
            done = (kwargs.get("metadata") or {}).get(TOPIC) if start == "processing" else None
            if done is not None:  # the worker's done-report (execute._attach_done)
                self.recorder.on_done(key, done)
                if ts is not None and ts.metadata:
                    ts.metadata.pop(TOPIC, None)  # the result bytes need not stay on the scheduler
        elif finish == "waiting":
            deps_pending = ts is not None and bool(ts.waiting_on)
        elif finish == "erred" and ts is not None and ts.exception_blame is not None and "cause" not in kwargs:
            kwargs["cause"] = ts.exception_blame.key
        lost_why = self._lost.pop(key, None) if self._lost and start == "processing" else None
        cancelled = finish == "released" and stimulus_id.startswith(_CANCEL_STIMULI)
        record = True
        if self._queued and key in self._queued:  # prefetched, not started (as far as the placer knows)
            if finish == "processing":
                record = False  # RUNNING is recorded when the placer promotes it
            elif start == "processing":
                q_worker, q_hosts, q_note = self._queued.pop(key)
                if finish in ("memory", "erred"):  # it ran before its promotion reached us
                    self.recorder.move(track, State.RUNNING, worker=q_worker, hosts=q_hosts, message=q_note)
                else:  # given back or its worker left: no attempt to record
                    record = cancelled = stimulus_id.startswith(_CANCEL_STIMULI)
        if record:  # positional: this runs for every transition of every task
            self.recorder.on_transition(track, start, finish, lost_why is not None, cancelled, deps_pending,
                                        worker, kwargs, hosts, note or lost_why)  # fmt: skip
        if track.spec is None:
            return
        # placement of balsam tasks
        if start == "processing" or (start == "no-worker" and finish != "processing"):
            self._gangs.pop(track.id, None)
            if self.placer.cancel(track.id):
                self._promoted()
                self._want_schedule()
            if ts is not None and finish in ("released", "waiting"):
                ts.worker_restrictions = HELD  # the next attempt goes through placement again
        if finish == "no-worker":
            self.placer.submit(track.id, track.spec.resources, track.spec.priority)
            self._want_schedule()

    @staticmethod
    def _restorable(track: Track) -> bool:
        return track.spec is not None and track.spec.durable

    def _restore_step(self, track: Track, ts: Any, finish: str, kwargs: dict[str, Any]) -> None:
        """A transition of a task whose lost result is being restored from the store."""
        key = track.key
        if finish == "no-worker":
            asyncio.get_running_loop().create_task(self._restore(track))
        elif finish == "memory":
            self.recorder.restored(track, self._restoring.pop(key))
            if ts is not None:
                ts.worker_restrictions = HELD
        elif finish == "erred":
            why = self._restoring.pop(key)
            self.recorder.move(track, State.FAILED, message=f"{why} failed: {kwargs.get('exception_text') or ''}")
        elif finish in ("released", "forgotten"):  # no longer wanted
            self._restoring.pop(key, None)
            if finish == "forgotten":
                self.recorder.forget(key)

    async def _restore(self, track: Track) -> None:
        """Read the task's stored result and let a stand-in task return it on any worker;
        without one, the task runs again (recorded as a lost result)."""
        loop = asyncio.get_running_loop()
        store = self.store
        assert store is not None
        problem = None
        try:
            await loop.run_in_executor(None, self.writer.flush, 30.0)  # its result may be in flight
            data = await loop.run_in_executor(None, store.result_bytes, track.id)
            if data is None:
                problem = "its result was not stored"
        except Exception as e:
            data, problem = None, f"reading it failed: {type(e).__name__}: {e}"
        key = track.key
        ts = self.scheduler.tasks.get(key)
        if key not in self._restoring or ts is None or ts.state != "no-worker":
            return  # released or cancelled meanwhile
        if data is None:
            del self._restoring[key]
            self.recorder.move(track, State.RESTART_READY, message=f"result lost: recomputing ({problem})")
            self.recorder.move(track, State.READY)
            assert track.spec is not None
            self.placer.submit(track.id, track.spec.resources, track.spec.priority)
            self._want_schedule()
            return
        ts.run_spec = Task(key, restored, data)
        ts.worker_restrictions = None
        ts.resource_restrictions = None
        self.scheduler.transitions({key: "processing"}, stimulus_id=f"balsam-restore-{time.time()}")

    def _promoted(self) -> None:
        """Record the start of queued tasks the placer promoted (their node freed cores)."""
        for task_id in self.placer.take_started():
            track = self.recorder.by_id.get(task_id)  # type: ignore[call-overload]
            info = self._queued.pop(track.key, None) if track is not None else None
            if info is not None:
                self.recorder.move(track, State.RUNNING, worker=info[0], hosts=info[1], message=info[2])

    def _on_steal_response(self, key: Hashable = None, state: str | None = None, stimulus_id: str = "",
                           worker: str | None = None, **kwargs: Any) -> None:  # fmt: skip
        if not stimulus_id.startswith(_UNQUEUE):
            if self._steal_fallback is not None:  # Dask's work stealing
                self._steal_fallback(key=key, state=state, stimulus_id=stimulus_id, worker=worker, **kwargs)
            return
        track = self.recorder.tracks.get(key)
        if track is None:
            return
        if state in _GIVEN_BACK:  # the worker dropped it: place it again
            self.scheduler._reschedule(key, worker=worker, stimulus_id=stimulus_id)
        else:  # it had started there
            self.placer.steal_refused(track.id)
        self._want_schedule()

    def _send_steals(self, now: float) -> None:
        for task_id, node in self.placer.take_steals():
            track = self.recorder.by_id.get(task_id)  # type: ignore[call-overload]
            if track is None or node not in self.scheduler.stream_comms:
                self.placer.steal_refused(task_id)
                continue
            msg = {"op": "steal-request", "key": track.key, "stimulus_id": f"{_UNQUEUE}{now}"}
            self.scheduler.worker_send(node, msg)

    def _want_schedule(self) -> None:
        if not self._sched_pending:
            self._sched_pending = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._sched_pending = False
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
        for a in assignments:
            track = self.recorder.by_id.get(a.task_id)  # type: ignore[call-overload]
            ts = s.tasks.get(track.key) if track is not None else None
            if track is None or ts is None or ts.state != "no-worker" or any(n not in s.workers for n in a.nodes):
                self.placer.cancel(a.task_id)
                self._promoted()
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
            ts.annotations = {
                **(ts.annotations or {}),
                DISPATCH_ANNOTATION: {"attempt": track.attempt + 1, "gpus": a.gpu_ids, "hosts": hosts,
                                      "workers": a.nodes, "task_id": track.id},
            }  # fmt: skip
            notes = [f"gpus={','.join(a.gpu_ids)}"] if a.gpu_ids else []
            if len(a.nodes) > 1:
                notes.append(f"workers={','.join(self._names.get(n, n) for n in a.nodes)}")
            if a.queued:  # the RUNNING event tells how long it waited on its node
                self._queued[track.key] = (leader, ",".join(hosts), " ".join([*notes, f"{QUEUED_AT}{now:.6f}"]))
            else:
                self._dispatched[track.key] = (",".join(hosts), " ".join(notes) or None)
            if len(a.nodes) == 1 and CORES_RESOURCE in s.workers[leader].resources:
                # The worker starts it only when its cores are free, and its queued tasks in
                # dispatch order (the placer's promotion order; among equal priorities Dask's
                # worker would start the newest first).
                ts.resource_restrictions = {CORES_RESOURCE: track.spec.resources.cores}
                self._order += 1
                ts.priority = (0, 0, self._order)
            if len(a.nodes) > 1:
                self._gangs[track.id] = a.nodes
                with self.pauser.running(leader):  # the leader is held (paused) for the gang
                    s.transitions({track.key: "processing"}, stimulus_id=f"balsam-dispatch-{now}")
                self._check_dispatched(track.key)
            else:
                serial[track.key] = "processing"
        self._sync_holds()  # before the serial tasks: a node a gang just left takes them
        if serial:
            # Dask pops recommendations last-in first: reversed, the compute-task messages
            # leave in placement order, so a worker meets its tasks in the placer's order
            s.transitions(dict(reversed(serial.items())), stimulus_id=f"balsam-dispatch-{now}")
            for key in serial:
                self._check_dispatched(key)
        if s.validate:
            self.placer.check_invariants()

    def _check_dispatched(self, key: Hashable) -> None:
        """A dispatched task that stayed in no-worker (its worker went away): place it again."""
        ts = self.scheduler.tasks.get(key)
        track = self.recorder.tracks.get(key)
        if ts is not None and ts.state == "no-worker" and track is not None and track.spec is not None:
            ts.worker_restrictions = HELD
            self._dispatched.pop(key, None)
            self._queued.pop(key, None)
            self._gangs.pop(track.id, None)
            self.placer.cancel(track.id)
            self._promoted()
            self.placer.submit(track.id, track.spec.resources, track.spec.priority)
            self._want_schedule()

    def _sync_holds(self) -> None:
        """Nodes reserved for, or running, a gang take no plain Dask task either."""
        held = {n for nodes in self.placer.reservations().values() for n in nodes}
        held.update(n for nodes in self._gangs.values() for n in nodes)
        if held or self.pauser.held:
            self.pauser.sync(held)

    # ------------------------------------------------------------------ workers
    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        info = (ws.extra or {}).get(EXTRA_KEY) if ws is not None else None
        if not info:
            return
        try:
            self.nodes[worker] = NodeConfig.from_dict(info)
            self._names[worker] = self.nodes[worker].name
        except Exception as e:
            self.errors.append(f"worker {worker} sent a bad node config: {e}")
            return
        if ws.status.name == "running":
            self._node_running(worker)

    def _node_running(self, worker: str) -> None:
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
        self._want_schedule()

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.nodes.pop(worker, None)
        self._only.pop(worker, None)
        self.pauser.forget(worker)
        if worker in self.placed:
            self._remove_node(worker)

    def _why_lost(self, worker: str) -> str:
        """Why a worker's running tasks were lost. As in Balsam, the tasks of a batch
        node-worker that went away (walltime, ``scancel``/``qdel``, its node lost) are
        recorded RUN_TIMEOUT and run again in another allocation; an emulated local node
        that dies loses its attempt (RESTART_READY)."""
        cfg = self.nodes.get(worker)
        if cfg is None:
            return f"attempt lost: worker {worker} left"
        if cfg.end_time is not None and time.time() >= cfg.end_time - 5:
            return f"{TIMEOUT_PREFIX}allocation {cfg.alloc_id} reached its end on {cfg.name}"
        if not cfg.alloc_id.startswith(("local-", "unmanaged")):
            return f"{TIMEOUT_PREFIX}allocation {cfg.alloc_id} ended on {cfg.name} (job cancelled or node lost)"
        return f"attempt lost: worker {cfg.name} left ({worker})"

    def _remove_node(self, worker: str) -> None:
        self.placed.discard(worker)
        for task_id in self.placer.remove_node(worker):  # its queued tasks come back through Dask
            nodes = self._gangs.pop(task_id, None) if isinstance(task_id, int) else None
            track = self.recorder.by_id.get(task_id) if isinstance(task_id, int) else None
            if nodes and track is not None and nodes[0] != worker:
                # a follower of a running gang is gone: stop the attempt on the leader; the
                # worker hands the task back (Reschedule) and it is placed again
                self._lost[track.key] = f"attempt lost: gang node {self._names.get(worker, worker)} left"
                if nodes[0] in self.scheduler.workers:
                    self.scheduler.worker_send(
                        nodes[0], {"op": KILL_OP, "keys": [str(track.key)], "reason": RESCHEDULE_REASON}
                    )
        self._want_schedule()

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == TOPIC:
            key = msg.get("key")
            if msg.get("op") == "attempt":
                self.recorder.on_attempt(key, msg)
            return
        if not isinstance(msg, dict):
            return
        action = msg.get("action")
        if action == "remove-worker" and topic != "all":
            why = self._why_lost(topic)
            for key in msg.get("processing-tasks") or ():
                self._lost.setdefault(key, why)
            if topic in self.placed:  # free its placement before its tasks come back
                self._remove_node(topic)
        elif action == "worker-status-change" and topic in self.nodes and not is_ours(msg.get("stimulus_id")):
            if msg.get("status") == "running":
                self.pauser.reassert(topic)  # a held node's own memory un-pause: it stays held
                self._node_running(topic)
            elif topic in self.placed and topic not in self.pauser.held:
                self.placer.set_draining(topic, True)

    # ------------------------------------------------------------------ allocations
    def new_allocation(self, **fields: Any) -> int:
        """Record a new allocation (batch job); returns its id in the store."""
        assert self.store is not None
        aid = self.store.new_id()
        self.writer.put(AllocationWrite(aid, {"state": "PENDING", "submitted_at": time.time(), "info": {}, **fields}))
        return aid

    def update_allocation(self, alloc_id: int, **fields: Any) -> None:
        self.writer.put(AllocationWrite(alloc_id, fields))

    # ------------------------------------------------------------------ kill
    def kill(self, keys: list[Hashable], reason: str = "killed on request", client: str | None = None) -> list[str]:
        s = self.scheduler
        by_worker: dict[str, list[str]] = {}
        killed = []
        for key in keys:
            track = self.recorder.tracks.get(key)
            if track is None or track.state in FINAL_STATES:
                continue
            ts = s.tasks.get(key)
            if ts is not None and ts.processing_on is not None:
                by_worker.setdefault(ts.processing_on.address, []).append(str(key))
            self.recorder.move(track, State.KILLED, message=reason)
            killed.append(key)
        for addr, wkeys in by_worker.items():
            s.worker_send(addr, {"op": KILL_OP, "keys": wkeys, "reason": reason})
        if killed:
            cs = client or next(iter(s.clients), None)
            if cs is not None:
                s.stimulus_cancel(killed, cs, force=True, reason=reason, msg=reason)
        return [str(k) for k in killed]

    # ------------------------------------------------------------------ RPC handlers
    def _handle_info(self) -> dict[str, Any]:
        shapes = [{"cores": c.cores, "gpus": c.gpus} for c in self.nodes.values()] + self.declared_shapes
        assert self.store is not None
        widest = max(self.placer.max_gang_width(), self.max_nodes_per_allocation or 0)
        return {"store": self.store.where, "session": self.store.session_id, "node_shapes": shapes,
                "max_nodes": widest or None}  # fmt: skip

    def _handle_declare_nodes(self, shapes: list[dict[str, int]]) -> None:
        self.declared_shapes = list(shapes)

    def _handle_kill(self, keys: list[Hashable] | None = None, tags: dict[str, str] | None = None,
                     reason: str = "killed on request", client: str | None = None) -> list[str]:  # fmt: skip
        chosen = list(keys or [])
        if tags:
            want = set(tags.items())
            chosen += [k for k, t in self.recorder.tracks.items() if t.spec is not None and want <= set(t.spec.tags)]
        return self.kill(chosen, reason=reason, client=client)

    def _handle_status(self) -> dict[str, Any]:
        p = self.placer
        return {
            "nodes": {n: dataclasses.asdict(p.node(n)) for n in p.nodes()},
            "waiting": len(p.waiting()),
            "running": len(p.running()),
            "anomalies": list(self.recorder.anomalies),
            "errors": list(self.errors),
            "writer": self._writer_status(),
        }  # fmt: skip

    def _writer_status(self) -> dict[str, Any]:
        w, stats = self.writer, self.writer.stats
        return {"pending": w.pending, "in_flight": w.in_flight, "written": stats.written,
                "rejected": len(stats.rejected), "retries": stats.retries, "restarts": stats.restarts,
                "last_error": stats.last_error, "alive": w.alive, "pid": w.pid}  # fmt: skip

    async def _handle_flush(self, timeout: float = 60.0) -> bool:
        loop = asyncio.get_running_loop()
        return bool(await loop.run_in_executor(None, self.writer.flush, timeout))

    async def _handle_resume(self, limit: int | None = None) -> list[dict[str, Any]]:
        from balsam_dask.scheduler.resume import claim_for_resume

        assert self.store is not None
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(None, claim_for_resume, self.store, limit)
        for item in plan:
            self._resumed[item["key"]] = (item["task_id"], item["state"], item["attempt"])
            self._resumed_data.update(item["data"])
        return plan
