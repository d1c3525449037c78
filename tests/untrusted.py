"""Crafted data for the tests of signed pickles: what someone who can write the store would plant."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path
from typing import Any

from sqlalchemy import update

from balsam_dask import Store
from balsam_dask.store.models import tasks_t


class Planted:
    """Unpickling this runs a shell command that creates ``marker``: proof that it was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def planted_pickle(marker: Path) -> bytes:
    return pickle.dumps(Planted(marker))


def forged(body: bytes, like: bytes) -> bytes:
    """``body`` behind the head of the signed blob ``like`` (its format and key id) with a made-up tag."""
    return like[:9] + os.urandom(32) + body


def raw(store: Store, task_id: int, column: str) -> bytes | None:
    with store.engine.connect() as conn:
        value = conn.execute(tasks_t.select().with_only_columns(tasks_t.c[column]).where(tasks_t.c.id == task_id))
        row = value.first()
    return None if row is None or row[0] is None else bytes(row[0])


def set_raw(store: Store, task_id: int, **columns: Any) -> None:
    """Write columns of a task behind the store's back (what a database user could do)."""
    with store.engine.begin() as conn:
        conn.execute(update(tasks_t).where(tasks_t.c.id == task_id).values(**columns))
