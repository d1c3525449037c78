"""The batch systems' ensemble clusters (script and parsing live in one module per system)."""

from __future__ import annotations

import shlex
from types import ModuleType
from typing import ClassVar

from balsam_dask.packing import lsf, pbs, slurm
from balsam_dask.packing.cluster import BatchJob, EnsembleCluster


class SlurmJob(BatchJob):
    system: ClassVar[ModuleType] = slurm


class SlurmEnsembleCluster(EnsembleCluster):
    """Ensemble jobs on Slurm: ``sbatch`` a multi-node job, one node-worker per node."""

    job_cls = SlurmJob


class PBSJob(BatchJob):
    system: ClassVar[ModuleType] = pbs


class PBSEnsembleCluster(EnsembleCluster):
    """Ensemble jobs on PBS Professional / OpenPBS: ``qsub`` a multi-node job, one
    node-worker per node started by ``mpiexec --ppn 1``."""

    job_cls = PBSJob


class LSFJob(BatchJob):
    """``bsub`` reads the job script on standard input (``bsub < script``), where it reads
    the script's ``#BSUB`` options; the script is passed as stdin, without a shell, so
    ``bsub``'s error output reaches the allocation's record when submission fails."""

    system: ClassVar[ModuleType] = lsf

    async def _submit_job(self, script_filename: str) -> str:
        with open(script_filename, "rb") as script:
            out = await self._call(shlex.split(self.submit_command), stdin=script)
        return str(out)


class LSFEnsembleCluster(EnsembleCluster):
    """Ensemble jobs on IBM Spectrum LSF: ``bsub`` a multi-host job, one node-worker per
    host started by ``blaunch``."""

    job_cls = LSFJob
