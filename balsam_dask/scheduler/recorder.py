"""Dask task transitions -> Balsam state changes, as store operations. No Dask import.
(Design notes: docs/ARCHITECTURE.md, scheduler/recorder.py.)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from balsam_dask.protocol import LostReason
from balsam_dask.scheduler.snapshot import Failures
from balsam_dask.spec import TaskSpec
from balsam_dask.store.ops import NewTask, Op, Settle, TaskUpdate, Transition
from balsam_dask.store.states import ACTIVE_STATES, LEGAL, UNFINISHED_STATES, State

log = logging.getLogger(__name__)
# The states as plain strings: this runs in the scheduler's transition hook, where an Enum
# member's attribute access and hash (Python code, ~0.1 us each) add up to a tenth of its time.
CREATED = State.CREATED.value
AWAITING_PARENTS = State.AWAITING_PARENTS.value
READY = State.READY.value
RUNNING = State.RUNNING.value
RUN_DONE = State.RUN_DONE.value
RUN_ERROR = State.RUN_ERROR.value
RUN_TIMEOUT = State.RUN_TIMEOUT.value
RESTART_READY = State.RESTART_READY.value
FINISHED = State.FINISHED.value
FAILED = State.FAILED.value
KILLED = State.KILLED.value
ERROR_TAIL = 4000
_NOTHING: frozenset[str] = frozenset()
#: Before READY: a plain task's states while Dask has it waiting or queued.
_WAITING: frozenset[str] = frozenset({CREATED, AWAITING_PARENTS})
#: The states from which a plain task starts RUNNING in one step.
_RUNNABLE: frozenset[str] = frozenset({READY, RESTART_READY})
_FINAL: frozenset[str] = frozenset({FINISHED, FAILED, KILLED})
ALL_STATES = (CREATED, AWAITING_PARENTS, READY, RUNNING, RUN_DONE, RUN_ERROR, RUN_TIMEOUT, RESTART_READY, FINISHED,
              FAILED, KILLED)  # fmt: skip


@lru_cache(maxsize=256)
def path_to(src: str, dst: str) -> tuple[str, ...] | None:
    """The shortest legal path of states from ``src`` to ``dst`` (excluding ``src``)."""
    if src == dst:
        return ()
    prev: dict[str, str] = {}
    q = deque([src])
    seen = {src}
    while q:
        s = q.popleft()
        for n in sorted(LEGAL.get(s, ())):
            if n in seen:
                continue
            prev[n] = s
            if n == dst:
                out = [n]
                while prev[out[-1]] != src:
                    out.append(prev[out[-1]])
                return tuple(reversed(out))
            seen.add(n)
            q.append(n)
    return None


@dataclass(slots=True)
class Track:
    id: int
    key: Hashable
    state: str
    attempt: int
    spec: TaskSpec | None
    worker: str | None = None
    #: Placed by Dask (``workers=``/``resources=`` annotations), not by the placer, spec or not.
    dask_placed: bool = False
    #: A database task (claimed by a service): its end settles its waiting children (``Settle``).
    settles: bool = False
    #: Run by a node's bundle executor (scheduler/bundles.py), not as a Dask task.
    bundled: bool = False


class Recorder:
    def __init__(self, put: Callable[[Op], None], new_id: Callable[[], int],
                 put_transition: Callable[..., None] | None = None) -> None:  # fmt: skip
        """``put`` queues an op; ``put_transition(*fields)`` a Transition given as its fields
        (a writer that keeps them without an object per op; default: ``put(Transition(...))``)."""
        self.put = put
        self.put_transition = put_transition or (lambda *fields: put(Transition(*fields)))
        self.new_id = new_id
        self.tracks: dict[Hashable, Track] = {}
        self.by_id: dict[int, Track] = {}
        self.anomalies: list[str] = []
        #: Worker address -> node name: history names the node (addresses do not last).
        self.names: dict[str, str] = {}
        #: Tasks by Balsam state, kept at every state change (finished tasks stay counted once
        #: forgotten, as in the store): what the live page reads without walking the tasks.
        self.counts: dict[str, int] = dict.fromkeys(ALL_STATES, 0)
        self.failures = Failures()  # the latest failed attempts and tasks, with their error tails
        self._done_notes: dict[Hashable, str] = {}  # key -> its RUN_DONE event's message
        self._own_tail: dict[Hashable, str] = {}  # key -> the error tail its worker reported

    # --- tasks ---
    def new_task(
        self, key: Hashable, spec: TaskSpec | None, parents: tuple[int, ...] = (),
        payload: Any = None, submitted_by: int | None = None,
    ) -> Track:  # fmt: skip
        tid = self.new_id()
        track = Track(tid, key, CREATED, 0, spec)
        self.counts[CREATED] += 1
        self.tracks[key] = track
        self.by_id[tid] = track
        self.put(NewTask(tid, _key_text(key), spec, None, None, parents, payload, time.time(), submitted_by))
        return track

    def adopt(self, key: Hashable, task_id: int, state: str, attempt: int, spec: TaskSpec | None) -> Track:
        """Track a task that already has a row (resumed from a previous session)."""
        track = Track(task_id, key, state, attempt, spec)
        self.counts[track.state] += 1
        self.tracks[key] = track
        self.by_id[task_id] = track
        return track

    def forget(self, key: Hashable) -> None:
        self._done_notes.pop(key, None)
        self._own_tail.pop(key, None)
        track = self.tracks.pop(key, None)
        if track is not None:
            self.by_id.pop(track.id, None)

    def move(
        self, track: Track, target: str, *, ts: float | None = None, worker: str | None = None,
        hosts: str | None = None, message: str | None = None, first_message: str | None = None,
    ) -> bool:  # fmt: skip
        """Record the shortest legal path from the task's state to ``target``."""
        src = track.state
        if worker is not None:
            worker = self.names.get(worker, worker)
        elif src == RUNNING:  # the event that ends a run names its worker (reports read runs from it)
            worker = track.worker
        # one step, nearly always: recorded here, without the loop below (folding it in as a
        # one-step path saves nothing: counted with callgrind)
        if target in LEGAL.get(src, _NOTHING):
            if target == RUNNING:
                track.attempt += 1
            self.put_transition(self.new_id(), track.id, src, target, time.time() if ts is None else ts,
                                track.attempt, worker, hosts if target == RUNNING else None, message)  # fmt: skip
            track.state = target
            counts = self.counts
            counts[src] -= 1
            counts[target] += 1
            if worker is not None:
                track.worker = worker
            if track.settles and target in _FINAL:
                self.put(Settle(track.id))
            return True
        steps = path_to(src, target)
        if steps is None:
            self.anomalies.append(f"{track.key}: no legal path {track.state} -> {target} ({message})")
            log.debug("balsam_dask: %s", self.anomalies[-1])
            return False
        now = ts if ts is not None else time.time()
        for i, state in enumerate(steps):
            if state == RUNNING:
                track.attempt += 1
            last = i == len(steps) - 1
            msg = message if last else (first_message if i == 0 else None)
            self.put_transition(self.new_id(), track.id, track.state, state, now, track.attempt,
                                worker, hosts if state == RUNNING else None, msg)  # fmt: skip
            track.state = state
        self.counts[src] -= 1
        self.counts[target] += 1
        if worker is not None:
            track.worker = worker
        if track.settles and target in _FINAL:
            self.put(Settle(track.id))
        return True

    def restored(self, track: Track, message: str) -> None:
        """A FINISHED task's lost result came back from the store: an event, same state."""
        self.put_transition(self.new_id(), track.id, FINISHED, FINISHED, time.time(), track.attempt, None, None,
                            message)  # fmt: skip

    def update(self, track: Track, **fields: Any) -> None:
        self.put(TaskUpdate(track.id, fields))

    # --- Dask transitions ---
    def on_transition(
        self, track: Track, start: str, finish: str, lost: LostReason | None, cancelled: bool, deps_pending: bool,
        worker: str | None, kwargs: dict[str, Any], hosts: str | None = None, note: str | None = None,
    ) -> None:  # fmt: skip
        """A Dask transition of a tracked task (positional: the hook runs for every transition).
        ``lost``: why its running attempt was lost, if it was; ``cancelled`` matters only when
        ``finish`` is "released"."""
        st = track.state
        if finish == "processing":
            self.move(track, RUNNING, worker=worker, hosts=hosts, message=note)
        elif finish in ("no-worker", "queued"):
            if st != RESTART_READY:
                self.move(track, READY)
        elif finish == "memory":
            stop = _compute_stop(kwargs)  # the worker's clock, corrected by Dask: keep it causal
            stop = min(stop, time.time()) if stop is not None else None
            if st in ACTIVE_STATES:
                if st != RUN_DONE:
                    note = self._done_notes.pop(track.key, None) if self._done_notes else None
                    self.move(track, RUN_DONE, ts=stop, worker=kwargs.get("worker"), message=note)
                self.move(track, FINISHED)
            elif st not in (FINISHED,):
                self.move(track, FINISHED, message="computed elsewhere")
        elif finish == "erred":
            self._erred(track, start, kwargs)
        elif finish == "waiting":
            if start == "processing":  # Dask's own retries
                self.move(track, RUN_ERROR, message="attempt failed (Dask retry)")
                self.move(track, RESTART_READY)
            elif st in (FINISHED, FAILED):
                self.move(track, RESTART_READY, message="result lost: recomputing" if st == FINISHED
                          else "retrying after failure")  # fmt: skip
            if deps_pending and track.state in (CREATED, READY, RESTART_READY):
                self.move(track, AWAITING_PARENTS)
        elif finish == "released":
            if start == "processing" and (lost or not cancelled):
                if lost is None:
                    why = note or "attempt rescheduled"
                elif lost.walltime:  # ended with its allocation
                    why = f"walltime: {lost.text}"
                    if track.state == RUNNING:
                        self.move(track, RUN_TIMEOUT, message=why)
                else:
                    why = lost.text
                self.move(track, RESTART_READY, message=why)
            elif cancelled and st in UNFINISHED_STATES:
                self.move(track, KILLED, message="cancelled")
            # otherwise Dask is only passing through "released" (to erred, to waiting...)
        elif finish == "forgotten":
            if st in UNFINISHED_STATES and start != "memory":
                self.move(track, KILLED, message="forgotten before it finished")
            self.forget(track.key)

    def plain_transition(self, track: Track, start: str, finish: str, tasks: Mapping[Hashable, Any],
                         kwargs: dict[str, Any]) -> bool:  # fmt: skip
        """The common transitions of a plain Dask task, recorded with the least work per call
        (the hook runs for every transition of every task): exactly what :meth:`on_transition`
        records for them. False, recording nothing, for any other: the caller takes the
        general path. The caller makes sure the task has no spec, no lost attempt and no
        result being restored. ``tasks``: the scheduler's tasks (their ``waiting_on`` and
        ``processing_on`` are read)."""
        st = track.state
        if finish == "memory":  # processing -> memory: RUN_DONE at the worker's compute end, FINISHED
            if st != RUNNING or start != "processing" or kwargs.get("metadata") or track.key in self._done_notes:
                return False
            stop = _compute_stop(kwargs)
            now = time.time()
            worker = kwargs.get("worker")
            if worker is not None:
                worker = track.worker = self.names.get(worker, worker)
            put, new_id, tid, attempt = self.put_transition, self.new_id, track.id, track.attempt
            put(new_id(), tid, RUNNING, RUN_DONE, now if stop is None else min(stop, now), attempt, worker, None, None)
            put(new_id(), tid, RUN_DONE, FINISHED, time.time(), attempt, None, None, None)
            track.state = FINISHED
            counts = self.counts
            counts[RUNNING] -= 1
            counts[FINISHED] += 1
            return True
        if finish == "processing":  # RUNNING, through READY if it was not runnable yet
            if st not in _RUNNABLE and st not in _WAITING:
                return False
            track_state = st
            ts = tasks.get(track.key)
            on = ts.processing_on if ts is not None else None
            worker = None if on is None else self.names.get(on.address, on.address)
            put, new_id, now = self.put_transition, self.new_id, time.time()
            if st in _WAITING:  # the shortest path: one more step, with the same time and worker
                put(new_id(), track.id, st, READY, now, track.attempt, worker, None, None)
                st = READY
            track.attempt += 1
            put(new_id(), track.id, st, RUNNING, now, track.attempt, worker, None, None)
            track.state = RUNNING
            counts = self.counts
            counts[track_state] -= 1
            counts[RUNNING] += 1
            if worker is not None:
                track.worker = worker
            return True
        if finish == "queued" or finish == "no-worker":
            if st not in _WAITING:
                return False
            self.put_transition(self.new_id(), track.id, st, READY, time.time(), track.attempt, None, None, None)
            track.state = READY
            counts = self.counts
            counts[st] -= 1
            counts[READY] += 1
            return True
        if finish == "waiting":  # AWAITING_PARENTS while its dependencies are not all in memory
            if st not in _WAITING or start == "processing":
                return False
            if st == CREATED:
                ts = tasks.get(track.key)
                if ts is not None and ts.waiting_on:
                    self.put_transition(self.new_id(), track.id, CREATED, AWAITING_PARENTS, time.time(),
                                        track.attempt, None, None, None)  # fmt: skip
                    track.state = AWAITING_PARENTS
                    self.counts[CREATED] -= 1
                    self.counts[AWAITING_PARENTS] += 1
            return True
        if finish == "forgotten":
            if st in UNFINISHED_STATES and start != "memory":
                return False
            self.forget(track.key)
            return True
        # Dask passing a finished task through "released" (memory -> released -> forgotten)
        return finish == "released" and start != "processing" and st not in UNFINISHED_STATES

    def _erred(self, track: Track, start: str, kwargs: dict[str, Any]) -> None:
        text = kwargs.get("exception_text") or ""
        tb = kwargs.get("traceback_text") or ""
        tail = (tb + text)[-ERROR_TAIL:] if (tb or text) else None
        cause = kwargs.get("cause")
        if start == "processing":
            if track.state == RUNNING:
                self.move(track, RUN_ERROR, message=text or None, worker=kwargs.get("worker"))
            self.move(track, FAILED, message=text or None)
            own = self._own_tail.pop(track.key, None)  # the worker's report holds the task's own error
            if own is None and tail:
                self.update(track, error_tail=tail)
            self.failures.add(time.time(), track.id, track.key, track.spec, FAILED, own or tail or text)
        else:
            why = f"parent {cause} failed" if cause is not None and cause != track.key else text or "failed"
            self.move(track, FAILED, message=why)
            self.failures.add(time.time(), track.id, track.key, track.spec, FAILED, why)

    # --- worker reports ---
    def on_attempt(self, key: Hashable, msg: dict[str, Any]) -> None:
        """A failed or timed-out attempt the worker retried (or gave up on)."""
        track = self.tracks.get(key)
        if track is None or track.state != RUNNING:
            return
        to = RUN_TIMEOUT if msg.get("kind") == "timeout" else RUN_ERROR
        ts = msg.get("ts")
        message, command = msg.get("message"), msg.get("command")
        self.move(track, to, ts=ts, message=f"{message}\ncommand: {command}" if command else message)
        fields = {k: msg[k] for k in ("error_tail", "workdir", "return_code") if msg.get(k) is not None}
        if fields:
            self.update(track, **fields)
            if not msg.get("retry") and "error_tail" in fields:
                self._own_tail[key] = fields["error_tail"]
        if msg.get("retry"):  # a failed attempt (the last one is shown with the task's failure)
            self.failures.add(
                time.time() if ts is None else ts, track.id, track.key, track.spec, to, msg.get("error_tail") or message
            )
            self.move(track, RESTART_READY, ts=ts, message="retrying")
            self.move(track, RUNNING, ts=ts, worker=track.worker)

    def on_done(self, key: Hashable, msg: dict[str, Any]) -> None:
        track = self.tracks.get(key)
        if track is None:
            return
        fields = {k: msg[k] for k in _DONE_FIELDS if msg.get(k) is not None}
        if fields:
            self.update(track, **fields)
        command = msg.get("command")
        if command:
            self._done_notes[key] = f"command: {command}"


#: What a worker's done-report sets on its task (a result file's digest is signed with its path).
_DONE_FIELDS = ("result", "result_ref", "result_digest", "return_code", "workdir")


def _key_text(key: Hashable) -> str:
    return key if isinstance(key, str) else str(key)


def _compute_stop(kwargs: dict[str, Any]) -> float | None:
    for ss in kwargs.get("startstops") or ():
        if ss.get("action") == "compute":
            return float(ss["stop"])
    return None
