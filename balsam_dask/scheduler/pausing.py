"""Keeping Dask's own scheduling off nodes held for MPI gangs.

Nodes reserved for a gang (draining) or running one are set to ``paused`` on the scheduler:
Dask sends a paused worker no new task, and its running tasks finish. The gang task itself
is dispatched to its leader with the worker briefly marked running. A worker's own memory
pause/unpause reaches the plugin as a status change; :meth:`Pauser.reassert` puts a held
node back to paused.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from distributed.core import Status

STIMULUS_PREFIX = "balsam-hold"


def is_ours(stimulus_id: str | None) -> bool:
    return bool(stimulus_id) and str(stimulus_id).startswith(STIMULUS_PREFIX)


class Pauser:
    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.held: set[str] = set()

    def sync(self, held: Iterable[str]) -> None:
        """Pause the workers in ``held`` and un-pause those no longer held."""
        want = {w for w in held if w in self.scheduler.workers}
        for addr in want - self.held:
            self._set(addr, Status.paused)
        for addr in self.held - want:
            if addr in self.scheduler.workers:
                self._set(addr, Status.running)
        self.held = want

    def forget(self, addr: str) -> None:
        self.held.discard(addr)

    def reassert(self, addr: str) -> None:
        """The worker un-paused itself (memory): a held node stays paused."""
        if addr in self.held:
            self._set(addr, Status.paused)

    def _set(self, addr: str, status: Status) -> None:
        self.scheduler.handle_worker_status_change(status, addr, stimulus_id=f"{STIMULUS_PREFIX}-{time.time()}")

    @contextmanager
    def running(self, addr: str) -> Iterator[None]:
        """Let Dask assign one task to a held (paused) worker: the gang's leader."""
        s = self.scheduler
        ws = s.workers.get(addr)
        if ws is None or ws.status == Status.running:
            yield
            return
        before = ws.status
        ws.status = Status.running
        s.running.add(ws)
        try:
            yield
        finally:
            ws.status = before
            s.running.discard(ws)
            s.idle.pop(addr, None)
            s.idle_task_count.discard(ws)
            s.saturated.discard(ws)
