"""The transfers of database tasks: what ``serve`` records of a task's staging, and reads back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import select

from balsam_dask.errors import StoreReadOnly
from balsam_dask.store.engine import read_tx, write_tx
from balsam_dask.store.models import transfers_t
from balsam_dask.taskdb.job import Transfer

if TYPE_CHECKING:
    from balsam_dask.store.api import Store

_FIELDS = ("direction", "src", "dest", "transport", "attempts", "ok", "error", "started", "ended", "nbytes")


def record_transfers(store: Store, task_id: int, transfers: Iterable[Transfer]) -> int:
    """Store a task's transfers (in one transaction); how many."""
    rows = [{"task_id": task_id, **{f: getattr(t, f) for f in _FIELDS}} for t in transfers]
    if not rows:
        return 0
    if store.read_only:
        raise StoreReadOnly(f"the store {store.where} was opened read-only (read_only=True): it cannot be written")
    with write_tx(store.engine) as conn:
        conn.execute(transfers_t.insert(), rows)
    return len(rows)


def transfers_of(store: Store, task_id: int) -> list[Transfer]:
    """A task's transfers in the order they were recorded."""
    q = select(*(transfers_t.c[f] for f in _FIELDS)).where(transfers_t.c.task_id == task_id)
    with read_tx(store.engine) as conn:
        return [Transfer(**r._mapping) for r in conn.execute(q.order_by(transfers_t.c.id))]
