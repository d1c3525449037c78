"""What a database task's node sent back, into the store: its transfers (recorded steps) and
the tasks its hooks created (a dynamic workflow)."""

from __future__ import annotations

from typing import Any

from balsam_dask.store.api import Store
from balsam_dask.store.transfers import record_transfers
from balsam_dask.taskdb.job import DbResult


def task_id_of(key: str) -> int:
    """The task id a database task's key ends with (``scheduler.claims.task_key``)."""
    return int(str(key).rsplit("-", 1)[1])


def record_outcome(store: Store, key: str, value: Any, error: BaseException | None) -> int:
    """Record the transfers and add the hook-created tasks of the task ``key``; returns how
    many tasks were added."""
    tid = task_id_of(key)
    transfers = value.transfers if isinstance(value, DbResult) else getattr(error, "transfers", ())
    if transfers:
        record_transfers(store, tid, list(transfers))
    rows = value.new_tasks if isinstance(value, DbResult) else getattr(error, "new_tasks", ())
    if rows:
        return len(store.add_tasks([dict(r) for r in rows]))
    return 0
