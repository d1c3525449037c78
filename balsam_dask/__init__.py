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
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'balsam_dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
