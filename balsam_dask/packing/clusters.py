"""The batch systems' ensemble clusters (script and parsing live in one module per system)."""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

from balsam_dask.packing import slurm
from balsam_dask.packing.cluster import BatchJob, EnsembleCluster


class SlurmJob(BatchJob):
    system: ClassVar[ModuleType] = slurm


class SlurmEnsembleCluster(EnsembleCluster):
    """Ensemble jobs on Slurm: ``sbatch`` a multi-node job, one node-worker per node."""

    job_cls = SlurmJob
