"""``BalsamPlugin``: the Dask scheduler plugin of balsam_dask. Its hooks record every task's
transitions (the recorder, through the store writer) and hand balsam tasks to the
dispatcher, which places them with the placer; the RPC handlers, the restoring of lost
results and the pausing of gang nodes are parts of their own (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Hashable
from functools import partial
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from balsam_dask.errors import StoreUnavailable
from balsam_dask.packing.holds import HOLD_AFTER
from balsam_dask.packing.placer import Placer
from balsam_dask.payload import dump_payload
from balsam_dask.protocol import (
    BUNDLE_REPORTS_OP,
    BUNDLE_SUBMIT_OP,
    EXTRA_KEY,
    KILL_OP,
    PARENT_ANNOTATION,
    SPEC_ANNOTATION,
    TOPIC,
    NodeConfig,
    wire_spec,
)
from balsam_dask.scheduler.bundles import Bundler
from balsam_dask.scheduler.dispatch import HELD, Dispatcher
from balsam_dask.scheduler.graph import parents_first
from balsam_dask.scheduler.handlers import Handlers
from balsam_dask.scheduler.live import Live
from balsam_dask.scheduler.pausing import is_ours
from balsam_dask.scheduler.recorder import Recorder, Track
from balsam_dask.scheduler.restore import Restorer
from balsam_dask.spec import TaskSpec
from balsam_dask.store.api import Store
from balsam_dask.store.ops import AllocationWrite
from balsam_dask.store.procwriter import ProcessWriter
from balsam_dask.store.states import FINAL_STATES, State
from balsam_dask.store.writer import check_writer_options

log = logging.getLogger(__name__)

PLUGIN_NAME = "balsam-dask"
#: Stimulus ids of Dask's cancellations (a released task with one was cancelled, not lost).
CANCEL_STIMULI = ("cancel-key", "client-releases-keys")
#: Queued tasks per full node while the backlog is deep (0: dispatch only onto free cores).
PREFETCH = 2
#: Annotations by which Dask places a task itself (``Scheduler._apply_annotations``): a balsam
#: task under ``dask.annotate(workers=..., resources=...)`` is placed by Dask, not held.
DASK_PLACEMENT = ("workers", "restrictions", "resources")


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
        self.placer = Placer(hold_after=hold_after, prefetch=prefetch)  # bad values fail here, before any task
        self.scheduler: Any = None
        self.store: Store | None = None
        self.writer: Any = None
        self.recorder: Recorder
        self.dispatcher: Dispatcher | None = None
        self.bundler: Bundler | None = None
        self.restorer: Restorer
        self.handlers = Handlers(self)
        self.live = Live(self)  # the dashboard's Balsam page and what it shows
        self.errors: list[str] = []
        self.close_error: str | None = None  # what the writer could not write when the plugin closed
        # key -> (task id, state, attempt[, a database task]): rows a client resumes or a service claimed
        self.resumed: dict[Hashable, tuple[Any, ...]] = {}
        self.resumed_data: set[Hashable] = set()  # finished parents re-entered as data: not new tasks
        self._poll_task: asyncio.Task[None] | None = None

    @property
    def nodes(self) -> dict[str, NodeConfig]:
        """The node-workers' configs, by worker address."""
        return self.dispatcher.nodes if self.dispatcher is not None else {}

    @property
    def placed(self) -> set[str]:
        """The node-workers the placer knows."""
        return self.dispatcher.placed if self.dispatcher is not None else set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        loop = asyncio.get_running_loop()
        store = self.store = await loop.run_in_executor(
            None, partial(Store, self.store_url, kind="scheduler", key_file=self.key_file)
        )
        await loop.run_in_executor(None, lambda: store.session_id)
        await loop.run_in_executor(None, store.signer.key)  # a key that cannot be made or trusted fails here
        if self.writer_process:  # the SQL work off the event loop's GIL, started at its first shipment
            self.writer = ProcessWriter(store, **self.writer_options)
        else:
            options = {k: v for k, v in self.writer_options.items() if k not in ("nice", "close_timeout")}
            self.writer = store.writer(**options)
        self.recorder = Recorder(self.writer.put, store.ids.next, self.writer.put_transition)
        d = self.dispatcher = Dispatcher(self.placer, self.recorder, scheduler, self.errors)
        self.recorder.names = d.names
        b = self.bundler = d.bundler = Bundler(d, scheduler)
        scheduler.stream_handlers[BUNDLE_SUBMIT_OP] = b.on_submit
        scheduler.stream_handlers[BUNDLE_REPORTS_OP] = b.on_reports
        self.restorer = Restorer(scheduler, self.recorder, d, store, self.writer)
        self.handlers.install(scheduler)
        self.live.install(scheduler)
        # answers to our requests for queued tasks come back as Dask's steal responses; a task
        # that secedes (long-running) gives its cores back: each after Dask's own handler
        d.steal_fallback = scheduler.stream_handlers.get("steal-response")
        scheduler.stream_handlers["steal-response"] = d.on_steal_response
        d.long_running_fallback = scheduler.stream_handlers.get("long-running")
        scheduler.stream_handlers["long-running"] = d.on_long_running
        self._poll_task = asyncio.create_task(self._poll())

    async def close(self) -> None:
        """Stop polling, write what is queued and leave the scheduler's handlers as ``start``
        found them (a plugin removed from a running scheduler leaves it bare Dask)."""
        if self._poll_task is not None:
            self._poll_task.cancel()
        s = self.scheduler
        d = self.dispatcher
        if s is not None:
            self.handlers.remove(s)
            self.live.remove(s)
        if s is not None and self.bundler is not None:
            for op in (BUNDLE_SUBMIT_OP, BUNDLE_REPORTS_OP):
                s.stream_handlers.pop(op, None)
        if s is not None and d is not None:
            for op, ours, original in (("steal-response", d.on_steal_response, d.steal_fallback),
                                       ("long-running", d.on_long_running, d.long_running_fallback)):  # fmt: skip
                if s.stream_handlers.get(op) == ours:
                    if original is None:
                        del s.stream_handlers[op]
                    else:
                        s.stream_handlers[op] = original
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
        assert self.store is not None and self.dispatcher is not None
        store, dispatcher = self.store, self.dispatcher
        while True:
            await asyncio.sleep(self.poll_interval)
            self.live.sample()
            try:
                ids = await loop.run_in_executor(None, store.kill_requests, store.session_id)
                keys = [self.recorder.by_id[i].key for i in ids if i in self.recorder.by_id]
                keys = [k for k in keys if self.recorder.tracks[k].state not in FINAL_STATES]
                if keys:
                    self.kill(keys, reason="kill requested in the store")
                dispatcher.want()
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
        dask_placing = [a for a in (annotations.get(n) for n in DASK_PLACEMENT) if a]
        rec = self.recorder
        wired: dict[int, bytes] = {}  # one serialization per distinct spec (a map shares one)
        for key in parents_first(tasks, priority, scheduler.tasks):
            ts = scheduler.tasks.get(key)
            if ts is None or key in rec.tracks:
                continue
            spec = specs.get(key)
            dask_placed = False
            if not isinstance(spec, TaskSpec):
                spec = None
            else:
                wire = wired.get(id(spec))
                if wire is None:
                    wire = wired[id(spec)] = wire_spec(spec)
                ts.annotations = {**(ts.annotations or {}), SPEC_ANNOTATION: wire}
                dask_placed = any(a.get(key) is not None for a in dask_placing)
                if not dask_placed:
                    ts.worker_restrictions = HELD
                    ts.host_restrictions = None
                    ts.loose_restrictions = False
            if key in self.resumed_data:
                self.resumed_data.discard(key)
                continue
            resumed = self.resumed.pop(key, None)
            if resumed is not None:
                self._adopt(key, spec, *resumed).dask_placed = dask_placed
                continue
            if ts.run_spec is None:
                continue
            deps = tuple(rec.tracks[d.key].id for d in ts.dependencies if d.key in rec.tracks)
            parent = parents.get(key)
            submitted_by = rec.tracks[parent].id if parent in rec.tracks else None
            payload = partial(dump_payload, spec, ts.run_spec) if spec is not None and spec.durable else None
            rec.new_task(key, spec, deps, payload, submitted_by).dask_placed = dask_placed

    def _adopt(self, key: Hashable, spec: TaskSpec | None, task_id: int, state: str, attempt: int,
               settles: bool = False) -> Track:  # fmt: skip
        track = self.recorder.adopt(key, task_id, state, attempt, spec)
        track.settles = settles
        if state not in (State.CREATED, State.AWAITING_PARENTS, State.READY, State.RESTART_READY):
            self.recorder.move(track, State.RESTART_READY, message="resumed: the previous scheduler died")
        return track

    # ------------------------------------------------------------------ transitions
    def transition(self, key: Hashable, start: str, finish: str, *args: Any, stimulus_id: str = "",
                   **kwargs: Any) -> None:  # fmt: skip
        track = self.recorder.tracks.get(key)
        if track is None:
            return
        d = self.dispatcher
        assert d is not None
        restorer = self.restorer
        if (  # a plain Dask task: the fast path
            track.spec is None and not d.lost and not restorer.restoring
            and self.recorder.plain_transition(track, start, finish, self.scheduler.tasks, kwargs)
        ):  # fmt: skip
            return
        ts = self.scheduler.tasks.get(key)
        if restorer.restoring and key in restorer.restoring:
            restorer.step(track, ts, finish, kwargs)
            return
        if finish == "waiting" and restorer.takes(track, ts, start, finish):
            return
        worker = hosts = note = None
        deps_pending = False
        if finish == "processing":
            if ts is not None and ts.processing_on is not None:
                worker = ts.processing_on.address
            if d.dispatched:
                hosts, note = d.dispatched.pop(key, (None, None))
        elif finish == "memory":
            done = (kwargs.get("metadata") or {}).get(TOPIC) if start == "processing" else None
            if done is not None:  # the worker's done-report (protocol.DoneReport)
                self.recorder.on_done(key, done)
                if ts is not None and ts.metadata:
                    ts.metadata.pop(TOPIC, None)  # the result bytes need not stay on the scheduler
        elif finish == "waiting":
            deps_pending = ts is not None and bool(ts.waiting_on)
        elif finish == "erred" and ts is not None and ts.exception_blame is not None and "cause" not in kwargs:
            kwargs["cause"] = ts.exception_blame.key
        lost = d.lost.pop(key, None) if d.lost and start == "processing" else None
        cancelled = finish == "released" and stimulus_id.startswith(CANCEL_STIMULI)
        record = True
        if d.queued and key in d.queued:  # prefetched, not started (as far as the placer knows)
            if finish == "processing":
                record = False  # RUNNING is recorded when the placer promotes it
            elif start == "processing":
                q_worker, q_hosts, q_note = d.queued.pop(key)
                if finish in ("memory", "erred"):  # it ran before its promotion reached us
                    self.recorder.move(track, State.RUNNING, worker=q_worker, hosts=q_hosts, message=q_note)
                else:  # given back or its worker left: no attempt to record
                    record = cancelled = stimulus_id.startswith(CANCEL_STIMULI)
        if record:  # positional: this runs for every transition of every task
            self.recorder.on_transition(track, start, finish, lost, cancelled, deps_pending, worker, kwargs, hosts,
                                        note)  # fmt: skip
        if track.spec is None or track.dask_placed:
            return
        # placement of balsam tasks
        if start == "processing" or (start == "no-worker" and finish != "processing"):
            d.attempt_ended(track, ts, finish)
        if finish == "no-worker":
            d.submit(track, ts)

    # ------------------------------------------------------------------ workers
    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        info = (ws.extra or {}).get(EXTRA_KEY) if ws is not None else None
        if not info or self.dispatcher is None:
            return
        try:
            config = NodeConfig.from_dict(info)
        except Exception as e:
            self.errors.append(f"worker {worker} sent a bad node config: {e}")
            return
        self.dispatcher.node_added(worker, config, running=ws.status.name == "running")

    def remove_client(self, scheduler: Any, client: str) -> None:
        if self.bundler is not None:
            self.bundler.owner_left(client)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.worker_removed(worker)

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == TOPIC:
            if msg.get("op") == "attempt":  # protocol.AttemptReport
                self.recorder.on_attempt(msg.get("key"), msg)
            return
        d = self.dispatcher
        if not isinstance(msg, dict) or d is None:
            return
        action = msg.get("action")
        if action == "remove-worker" and topic != "all":
            why = d.why_lost(topic)
            for key in msg.get("processing-tasks") or ():
                d.lost.setdefault(key, why)
            if topic in d.placed:  # free its placement before its tasks come back
                d.node_lost(topic)
        elif action == "worker-status-change" and topic in d.nodes and not is_ours(msg.get("stimulus_id")):
            if msg.get("status") == "running":
                d.pauser.reassert(topic)  # a held node's own memory un-pause: it stays held
                d.node_running(topic)
            else:
                d.node_draining(topic)

    # ------------------------------------------------------------------ allocations
    def new_allocation(self, **fields: Any) -> int:
        """Record a new allocation (batch job); returns its id in the store."""
        assert self.store is not None
        aid = self.store.new_id()
        record = {"state": "PENDING", "submitted_at": time.time(), "info": {}, **fields}
        self.live.allocation(aid, record)
        self.writer.put(AllocationWrite(aid, record))
        return aid

    def update_allocation(self, alloc_id: int, **fields: Any) -> None:
        self.live.allocation(alloc_id, fields)
        self.writer.put(AllocationWrite(alloc_id, fields))

    # ------------------------------------------------------------------ kill
    def kill(self, keys: list[Hashable], reason: str = "killed on request", client: str | None = None) -> list[str]:
        """Record ``keys`` KILLED, stop their running attempts and cancel them in Dask."""
        s = self.scheduler
        by_worker: dict[str, list[str]] = {}
        killed = []
        bundled = []
        for key in keys:
            track = self.recorder.tracks.get(key)
            if track is None or track.state in FINAL_STATES:
                continue
            if track.bundled:
                self.recorder.move(track, State.KILLED, message=reason)
                bundled.append(track)
                continue
            ts = s.tasks.get(key)
            if ts is not None and ts.processing_on is not None:
                by_worker.setdefault(ts.processing_on.address, []).append(str(key))
            self.recorder.move(track, State.KILLED, message=reason)
            killed.append(key)
        if bundled and self.bundler is not None:
            self.bundler.kill(bundled, reason)
        for addr, wkeys in by_worker.items():
            s.worker_send(addr, {"op": KILL_OP, "keys": wkeys, "reason": reason})
        if killed:
            cs = client or next(iter(s.clients), None)
            if cs is not None:
                s.stimulus_cancel(killed, cs, force=True, reason=reason, msg=reason)
        return [str(k) for k in killed] + [str(t.key) for t in bundled]
