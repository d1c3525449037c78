"""A balsam task that secedes (``distributed.secede()``) gives its cores back, as Dask gives
back its thread: on the worker here (a task queued on the node for ``BALSAM_CORES`` may start),
on the scheduler by the placer (``Placer.release_cores``, through the dispatcher). Its GPUs stay
with it; ``rejoin()`` takes nothing back, as in Dask."""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Any

from balsam_dask.protocol import CORES_RESOURCE


def release_worker_cores(worker: Any, key: Hashable) -> bool:
    """The seceded task ``key`` holds no ``BALSAM_CORES`` on ``worker`` any more (nor gives
    any back when it ends); tasks waiting for cores are looked at again. False if it held none."""
    state = worker.state
    ts = state.tasks.get(key)
    held = ts.resource_restrictions.get(CORES_RESOURCE) if ts is not None and ts.resource_restrictions else None
    if not held:
        return False
    ts.resource_restrictions = {r: n for r, n in ts.resource_restrictions.items() if r != CORES_RESOURCE}
    state.available_resources[CORES_RESOURCE] += held
    # called inside the worker's transitions, after Dask looked for a task to start: look again
    # once they are over
    worker.loop.add_callback(start_waiting, worker)
    return True


def start_waiting(worker: Any) -> None:
    """Let the worker start tasks that were waiting for resources (as it does when it resumes
    from a pause: the only state machine event that does just that)."""
    from distributed.worker_state_machine import UnpauseEvent

    state = worker.state
    if state.running and state.constrained:
        worker.handle_stimulus(UnpauseEvent(stimulus_id=f"balsam-seceded-{time.time()}"))
