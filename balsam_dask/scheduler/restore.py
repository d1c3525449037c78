"""Restoring a finished durable task whose result was lost with its worker: the result comes
back from the store (verified), returned by a stand-in task on any worker, instead of
running the task again; without a stored result the task runs again, recorded as such."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from typing import Any

from dask._task_spec import Task

from balsam_dask.function import restored
from balsam_dask.scheduler.dispatch import HELD, Dispatcher
from balsam_dask.scheduler.recorder import FINISHED, Recorder, Track
from balsam_dask.store.states import State


class Restorer:
    def __init__(self, scheduler: Any, recorder: Recorder, dispatcher: Dispatcher, store: Any, writer: Any) -> None:
        self.scheduler = scheduler
        self.recorder = recorder
        self.dispatcher = dispatcher
        self.store = store
        self.writer = writer
        self.restoring: dict[Hashable, str] = {}  # key -> the message recorded once it is back

    def takes(self, track: Track, ts: Any, start: str, finish: str) -> bool:
        """Whether this transition starts a restore: a finished durable task sent back to
        ``waiting`` (its result was lost); it is held until its parents are back."""
        if not (finish == "waiting" and start == "released" and track.state == FINISHED):
            return False
        if track.spec is None or not track.spec.durable or track.dask_placed:
            return False
        self.restoring[track.key] = f"result restored from the store (lost with {track.worker or 'its worker'})"
        if ts is not None:
            ts.worker_restrictions = HELD
        return True

    def step(self, track: Track, ts: Any, finish: str, kwargs: dict[str, Any]) -> None:
        """A transition of a task being restored."""
        key = track.key
        if finish == "no-worker":
            asyncio.get_running_loop().create_task(self._restore(track))
        elif finish == "memory":
            self.recorder.restored(track, self.restoring.pop(key))
            if ts is not None:
                ts.worker_restrictions = HELD
        elif finish == "erred":
            why = self.restoring.pop(key)
            self.recorder.move(track, State.FAILED, message=f"{why} failed: {kwargs.get('exception_text') or ''}")
        elif finish in ("released", "forgotten"):  # no longer wanted
            self.restoring.pop(key, None)
            if finish == "forgotten":
                self.recorder.forget(key)

    async def _restore(self, track: Track) -> None:
        """Read the task's stored result and let a stand-in task return it on any worker;
        without one, the task runs again (recorded as a lost result)."""
        loop = asyncio.get_running_loop()
        problem = None
        try:
            await loop.run_in_executor(None, self.writer.flush, 30.0)  # its result may be in flight
            data = await loop.run_in_executor(None, self.store.result_bytes, track.id)
            if data is None:
                problem = "its result was not stored"
        except Exception as e:
            data, problem = None, f"reading it failed: {type(e).__name__}: {e}"
        key = track.key
        ts = self.scheduler.tasks.get(key)
        if key not in self.restoring or ts is None or ts.state != "no-worker":
            return  # released or cancelled meanwhile
        if data is None:
            del self.restoring[key]
            self.recorder.move(track, State.RESTART_READY, message=f"result lost: recomputing ({problem})")
            self.recorder.move(track, State.READY)
            self.dispatcher.submit(track)
            return
        ts.run_spec = Task(key, restored, data)
        ts.worker_restrictions = None
        ts.resource_restrictions = None
        self.scheduler.transitions({key: "processing"}, stimulus_id=f"balsam-restore-{time.time()}")
