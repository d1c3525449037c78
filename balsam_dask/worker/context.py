"""What a running balsam task knows about itself: ``balsam_dask.current_task()``.

Light on purpose (no Dask import): isolated functions and MPI ranks set it in their own
processes too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from balsam_dask.spec import TaskSpec


@dataclass(frozen=True)
class TaskContext:
    """What a running balsam task knows about itself (``balsam_dask.current_task()``)."""

    key: str
    spec: TaskSpec
    attempt: int
    gpu_ids: tuple[str, ...]
    hosts: tuple[str, ...]
    node: str
    task_id: int | None = None  # the task's id in the store (None when called outside a cluster)
    #: What this attempt launched, for the record: ``command``, ``workdir``, ``return_code``.
    launch: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def cores(self) -> int:
        return self.spec.resources.cores


_local = threading.local()


def current_task() -> TaskContext | None:
    """The balsam task running in this thread, if any."""
    return getattr(_local, "ctx", None)


def set_current(ctx: TaskContext | None) -> None:
    """Make ``ctx`` this thread's running task (None: no task)."""
    _local.ctx = ctx


@dataclass(frozen=True)
class AttemptSite:
    """Where attempts run when no Dask task carries them (a bundled task on its node's
    executor): the key, spec and dispatch, and where the attempt and done reports go."""

    key: str
    spec: TaskSpec
    dispatch: dict[str, Any]
    report: Callable[[dict[str, Any]], None]
    done: Callable[[dict[str, Any]], None]


def set_site(site: AttemptSite | None) -> None:
    """Run this thread's next attempts at ``site`` (None: as a Dask task)."""
    _local.site = site


def current_site() -> AttemptSite | None:
    return getattr(_local, "site", None)
