"""The SQL provenance store (DESIGN.md §3)."""

from balsam_dask.store.api import Store
from balsam_dask.store.ops import (
    AllocationRecord,
    AllocationWrite,
    AppRecord,
    EventRecord,
    NewTask,
    ShapeBacklog,
    TaskRecord,
    TaskUpdate,
    Transition,
)
from balsam_dask.store.states import State
from balsam_dask.store.writer import BatchWriter

__all__ = [
    "AllocationRecord",
    "AllocationWrite",
    "AppRecord",
    "BatchWriter",
    "EventRecord",
    "NewTask",
    "ShapeBacklog",
    "State",
    "Store",
    "TaskRecord",
    "TaskUpdate",
    "Transition",
]
