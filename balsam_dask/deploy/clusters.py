"""The batch systems' ensemble clusters (script and parsing live in one module per system)."""

from __future__ import annotations

from typing import ClassVar

from balsam_dask.deploy.ensemble import BatchJob, EnsembleCluster
from balsam_dask.deploy.systems import BatchSystem, lsf, pbs, slurm


class SlurmJob(BatchJob):
    system: ClassVar[BatchSystem] = slurm


class SlurmEnsembleCluster(EnsembleCluster):
    """Ensemble jobs on Slurm: ``sbatch`` a multi-node job, one node-worker per node."""

    job_cls = SlurmJob


class PBSJob(BatchJob):
    system: ClassVar[BatchSystem] = pbs


class PBSEnsembleCluster(EnsembleCluster):
    """Ensemble jobs on PBS Professional / OpenPBS: ``qsub`` a multi-node job, one
    node-worker per node started by ``mpiexec --ppn 1``."""

    job_cls = PBSJob


class LSFJob(BatchJob):
    system: ClassVar[BatchSystem] = lsf


class LSFEnsembleCluster(EnsembleCluster):
    """Ensemble jobs on IBM Spectrum LSF: ``bsub`` a multi-host job, one node-worker per
    host started by ``blaunch``."""

    job_cls = LSFJob
