"""balsam_dask: a Dask-integrated high-throughput backend for supercomputers.

Public names are imported lazily, so ``import balsam_dask`` (and the CLI) stays cheap
and has no side effects; the Dask-facing parts load ``distributed`` on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from balsam_dask.errors import (
    AllocationError,
    AppError,
    BalsamDaskError,
    FunctionLoadError,
    IllegalTransition,
    InvalidSpec,
    InvalidTags,
    KeyFileError,
    LauncherError,
    MPITaskError,
    SchemaTooNew,
    StoreError,
    StoreReadOnly,
    StoreUnavailable,
    TaskKilled,
    TaskTimeout,
    UnknownTask,
    UntrustedData,
    WrongKey,
)
from balsam_dask.spec import NodeShape, Resources, TaskSpec

__version__ = "0.1.0"

_LAZY = {
    "Store": "balsam_dask.store.api",
    "State": "balsam_dask.store.states",
    "Client": "balsam_dask.client.client",
    "LocalEnsembleCluster": "balsam_dask.deploy.local",
    "BalsamPlugin": "balsam_dask.scheduler.plugin",
    "AppResult": "balsam_dask.apps",
    "current_task": "balsam_dask.worker.context",
    "progress": "balsam_dask.client.progress",
    "SlurmEnsembleCluster": "balsam_dask.deploy.clusters",
    "PBSEnsembleCluster": "balsam_dask.deploy.clusters",
    "LSFEnsembleCluster": "balsam_dask.deploy.clusters",
}

__all__ = [
    "AllocationError",
    "AppError",
    "AppResult",
    "BalsamDaskError",
    "BalsamPlugin",
    "Client",
    "FunctionLoadError",
    "IllegalTransition",
    "InvalidSpec",
    "InvalidTags",
    "KeyFileError",
    "LSFEnsembleCluster",
    "LauncherError",
    "LocalEnsembleCluster",
    "MPITaskError",
    "NodeShape",
    "PBSEnsembleCluster",
    "Resources",
    "SchemaTooNew",
    "SlurmEnsembleCluster",
    "State",
    "Store",
    "StoreError",
    "StoreReadOnly",
    "StoreUnavailable",
    "TaskKilled",
    "TaskSpec",
    "TaskTimeout",
    "UnknownTask",
    "UntrustedData",
    "WrongKey",
    "current_task",
    "progress",
    "report",
]


def report(store: Any = None, **options: Any) -> Any:
    """What ran in a store: ``balsam_dask.report(store_or_url, since=, until=, tags=, app=, name=,
    interval=)`` returns a :class:`balsam_dask.reports.frames.Report` (DataFrames and a summary).

    ``store``: a ``Store``, or a URL or SQLite file opened read-only (None: the default store).
    Bad options raise one ``InvalidSpec`` naming the value, before the store is opened. See
    ``Store.report`` for the options."""
    import os

    from balsam_dask.store.api import Store
    from balsam_dask.store.reports import report_query

    if isinstance(store, Store):
        return store.report(**options)
    report_query(**options)
    with Store(os.fspath(store) if isinstance(store, os.PathLike) else store, read_only=True, kind="report") as s:
        return s.report(**options)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'balsam_dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
