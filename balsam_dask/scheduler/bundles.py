"""Bundled dispatch on the scheduler: balsam tasks that are not Dask tasks.

An owner (a ``balsam_dask.Client``'s bundled ``map``, or ``balsam-dask serve``) submits
:class:`~balsam_dask.protocol.BundledCall` items. Each is recorded as its own task, placed by
the placer like any serial balsam task (exact cores and GPUs, priorities, walltime, queued on
full nodes), and sent to its node's executor with the other tasks placed there in the same
round: one message per node, not one Dask task each. The node's batched reports record each
task's own start, failed attempts and end; its outcome goes to its owner in batches. A node
lost mid-bundle gives its unfinished tasks back to placement (RESTART_READY); finished ones
stay finished. How deep a node's queue is follows the tasks' measured durations (about
``QUEUE_SECONDS`` of work), so short tasks travel many per message and long ones few.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from balsam_dask.packing.records import Assignment
from balsam_dask.protocol import (
    BUNDLE_OP,
    BUNDLE_RESULTS_OP,
    BUNDLE_UNQUEUE_OP,
    KILL_OP,
    BundledCall,
    BundledOutcome,
    BundledTask,
    BundleReport,
    Dispatch,
    LostReason,
    task_spec,
)
from balsam_dask.scheduler.recorder import Track
from balsam_dask.store.states import FINAL_STATES, State

#: Work (seconds) a node's queue should hold so it never waits for the next bundle.
QUEUE_SECONDS = 0.05
#: Bounds of the queue depth per full node.
MAX_DEPTH = 512


@dataclass(slots=True)
class Bundled:
    """One bundled task on the scheduler."""

    track: Track
    owner: str  # the client that submitted it
    call: BundledCall
    node: str | None = None  # the node it was sent to
    started: float = 0.0


class Bundler:
    def __init__(self, dispatcher: Any, scheduler: Any) -> None:
        """``dispatcher``: the plugin's Dispatcher (its placer, recorder, node names)."""
        self.d = dispatcher
        self.placer = dispatcher.placer
        self.recorder = dispatcher.recorder
        self.scheduler = scheduler
        self.items: dict[Hashable, Bundled] = {}
        self.fns: dict[str, bytes] = {}  # function id -> pickled (task_fn, handlers)
        self.fn_refs: dict[str, int] = {}
        self.outbox: dict[str, list[BundledTask]] = {}  # node -> tasks placed this round
        self.results: dict[str, list[BundledOutcome]] = {}  # owner -> outcomes to send
        self.base_depth = self.placer.prefetch.depth
        self.mean_duration: float | None = None
        self.ended = 0
        self._sending = False

    # ------------------------------------------------------------------ from owners
    def submit(self, owner: str, tasks: list[BundledCall], fns: dict[str, bytes] | None = None,
               adopted: dict[str, tuple[int, str, int]] | None = None) -> None:  # fmt: skip
        """Record and place ``tasks``; ``adopted``: key -> (task id, state, attempt) of rows
        that exist (database tasks a service claimed; their end settles their children)."""
        rec, placer = self.recorder, self.placer
        for fn_id, data in (fns or {}).items():
            self.fns.setdefault(fn_id, data)
        for call in tasks:
            key = call["key"]
            if key in self.items or key in rec.tracks:
                continue
            spec = task_spec(call["spec"])
            row = adopted.get(key) if adopted else None
            if row is not None:
                track = rec.adopt(key, row[0], row[1], row[2], spec)
                track.settles = True
                if track.state not in (State.READY, State.RESTART_READY):
                    rec.move(track, State.READY)
            else:
                track = rec.new_task(key, spec)
                rec.move(track, State.READY)
            track.bundled = True
            fn = call.get("fn")
            if fn is not None:
                self.fn_refs[fn] = self.fn_refs.get(fn, 0) + 1
            self.items[key] = Bundled(track, owner, call)
            placer.submit(track.id, spec.resources, call.get("priority", 0))
        self.d.want()

    def on_submit(self, tasks: list[BundledCall], fns: dict[str, bytes] | None = None, client: str = "",
                  **_: Any) -> None:  # fmt: skip
        """The scheduler's stream handler for a client's ``BUNDLE_SUBMIT_OP``."""
        self.submit(client, tasks, fns)

    def owner_left(self, owner: str) -> None:
        """Its client is gone: nobody wants its tasks' outcomes (database tasks run on)."""
        self.results.pop(owner, None)
        gone = [i.track for i in self.items.values() if i.owner == owner and not i.track.settles]
        for track in gone:
            self.recorder.move(track, State.KILLED, message="its client left")
        self.kill(gone, "its client left")

    # ------------------------------------------------------------------ placement
    def assign(self, track: Track, a: Assignment, now: float) -> None:
        """The placer put ``track`` on ``a.nodes[0]``: into that node's next message."""
        item = self.items.get(track.key)
        leader = a.nodes[0]
        if item is None or leader not in self.scheduler.workers:
            self.placer.cancel(a.task_id)
            self.d.promoted()
            if item is not None and track.spec is not None:
                self.placer.submit(track.id, track.spec.resources, item.call.get("priority", 0))
            return
        item.node = leader
        cfg = self.d.nodes.get(leader)
        dispatch: Dispatch = {"attempt": track.attempt + 1, "gpus": a.gpu_ids,
                              "hosts": ((cfg.host if cfg else None) or leader,), "workers": a.nodes,
                              "task_id": track.id}  # fmt: skip
        task: BundledTask = {**item.call, "dispatch": dispatch}
        self.outbox.setdefault(leader, []).append(task)

    def send(self) -> None:
        """One message per node with what this round placed there (and the functions it needs)."""
        outbox, self.outbox = self.outbox, {}
        for node, tasks in outbox.items():
            fns = {f: self.fns[f] for f in {t["fn"] for t in tasks if "fn" in t} if f in self.fns}
            self.scheduler.worker_send(node, {"op": BUNDLE_OP, "tasks": tasks, "fns": fns})

    def unqueue(self, steals: list[tuple[int, str]]) -> None:
        """Ask nodes for queued bundled tasks back (the placer's steals)."""
        by_node: dict[str, list[str]] = {}
        for task_id, node in steals:
            track = self.recorder.by_id.get(task_id)
            if track is None or node not in self.scheduler.stream_comms:
                self.placer.steal_refused(task_id)
                continue
            by_node.setdefault(node, []).append(str(track.key))
        for node, keys in by_node.items():
            self.scheduler.worker_send(node, {"op": BUNDLE_UNQUEUE_OP, "keys": keys})

    # ------------------------------------------------------------------ from nodes
    def on_reports(self, reports: list[BundleReport], worker: str = "", **_: Any) -> None:
        """The scheduler's stream handler for a node's batch of reports."""
        rec = self.recorder
        for r in reports:
            item = self.items.get(r["key"])
            if item is None:
                continue
            op, track = r["op"], item.track
            if op == "start":
                item.started = r["ts"]
                if track.state in (State.READY, State.RESTART_READY):
                    rec.move(track, State.RUNNING, ts=r["ts"], worker=worker, hosts=self.d.nodes[worker].host
                             if worker in self.d.nodes else None)  # fmt: skip
            elif op == "attempt":
                rec.on_attempt(track.key, dict(r))
            elif op == "end":
                self._end(item, r, worker)
            elif op == "unqueued":
                self.placer.cancel(track.id)
                item.node = None
                if track.spec is not None:
                    self.placer.submit(track.id, track.spec.resources, item.call.get("priority", 0))
            elif op == "kept":
                self.placer.steal_refused(track.id)
        self.d.promoted()
        self.d.want()

    def _end(self, item: Bundled, r: BundleReport, worker: str) -> None:
        track, rec = item.track, self.recorder
        self.placer.cancel(track.id)
        status = r.get("status")
        if track.state not in FINAL_STATES:
            if status == "ok":
                done = r.get("done")
                if done:
                    if r.get("stored"):  # the value is the stored result (sent once)
                        done["result"] = r["value"]
                    rec.on_done(track.key, done)
                stops = ({"action": "compute", "stop": r["ts"]},)
                rec.on_transition(track, "processing", "memory", None, False, False, None,
                                  {"startstops": stops, "worker": worker})  # fmt: skip
            elif status == "error":
                rec.on_transition(track, "processing", "erred", None, False, False, None,
                                  {"exception_text": r.get("text"), "traceback_text": r.get("traceback"),
                                   "worker": worker})  # fmt: skip
            else:
                rec.move(track, State.KILLED, message=r.get("text") or "killed")
        if item.started:
            took = max(r["ts"] - item.started, 0.0)
            m = self.mean_duration
            self.mean_duration = took if m is None else 0.9 * m + 0.1 * took
            self.ended += 1
            if self.ended % 64 == 1:
                self._adapt_depth()
        outcome: BundledOutcome = {"key": str(track.key), "status": status or "killed"}
        for field in ("value", "error", "text"):
            if field in r:
                outcome[field] = r[field]
        self._drop(item)
        self._tell(item.owner, outcome)

    def node_lost(self, worker: str, why: LostReason) -> None:
        """``worker`` is gone: its unfinished tasks go back to placement, recorded as lost."""
        rec = self.recorder
        for item in [i for i in self.items.values() if i.node == worker]:
            track = item.track
            item.node = None
            item.started = 0.0
            self.placer.cancel(track.id)
            if track.state in FINAL_STATES:
                continue
            if track.state == State.RUNNING:
                if why.walltime:
                    rec.move(track, State.RUN_TIMEOUT, message=f"walltime: {why.text}")
                rec.move(track, State.RESTART_READY, message=why.text)
            if track.spec is not None:
                self.placer.submit(track.id, track.spec.resources, item.call.get("priority", 0))
        self.d.want()

    # ------------------------------------------------------------------ kill
    def kill(self, tracks: list[Track], reason: str) -> None:
        """Stop bundled tasks already recorded KILLED: taken off their node, their owner told."""
        by_node: dict[str, list[str]] = {}
        for track in tracks:
            item = self.items.get(track.key)
            if item is None:
                continue
            self.placer.cancel(track.id)
            if item.node is not None:
                by_node.setdefault(item.node, []).append(str(track.key))
            self._drop(item)
            self._tell(item.owner, {"key": str(track.key), "status": "killed", "text": reason})
        for node, keys in by_node.items():
            if node in self.scheduler.stream_comms:
                self.scheduler.worker_send(node, {"op": KILL_OP, "keys": keys, "reason": reason})
        self.d.promoted()
        self.d.want()

    # ------------------------------------------------------------------ helpers
    def _drop(self, item: Bundled) -> None:
        key = item.track.key
        del self.items[key]
        self.recorder.forget(key)
        fn = item.call.get("fn")
        if fn is not None:
            left = self.fn_refs[fn] - 1
            if left:
                self.fn_refs[fn] = left
            else:
                del self.fn_refs[fn]
                self.fns.pop(fn, None)

    def _tell(self, owner: str, outcome: BundledOutcome) -> None:
        self.results.setdefault(owner, []).append(outcome)
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().call_soon(self._send_results)

    def _send_results(self) -> None:
        self._sending = False
        results, self.results = self.results, {}
        comms = self.scheduler.client_comms
        for owner, outcomes in results.items():
            comm = comms.get(owner)
            if comm is not None:
                comm.send({"op": BUNDLE_RESULTS_OP, "results": outcomes})

    def _adapt_depth(self) -> None:
        """Queue about QUEUE_SECONDS of work per full node (deeper only while nothing is queued
        at a smaller depth, so the placer's invariants hold)."""
        prefetch = self.placer.prefetch
        mean = max(self.mean_duration or 1.0, 1e-5)
        want = max(self.base_depth, min(MAX_DEPTH, int(QUEUE_SECONDS / mean)))
        if want > prefetch.depth or not prefetch.n_queued:
            prefetch.depth = want

    def stats(self) -> dict[str, Any]:
        return {"tasks": len(self.items), "depth": self.placer.prefetch.depth, "mean_duration": self.mean_duration,
                "ended": self.ended, "at": time.time()}  # fmt: skip
