"""Batch systems: what one must say to submit, watch, shrink and cancel an ensemble job.

Each system is a module (``slurm``, ``pbs``, ``lsf``) that satisfies :class:`BatchSystem`: it
builds the exact job script and command lines and parses the commands' output; it runs
nothing (the ensemble clusters run the commands through ``deploy/commands.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from balsam_dask.deploy.jobs import EnsembleJobSpec


class BatchSystem(Protocol):
    NAME: str  # "slurm", "pbs", "lsf": the allocations' system in the store
    SUBMIT: str  # the submission command (its argument: the script file, or the script on stdin)
    CANCEL: str  # cancels a job given its id
    STATUS: str  # the status command's name, for messages
    SUBMIT_READS_STDIN: bool  # ``bsub < script``: the script goes to the command's standard input

    def job_script(self, job: EnsembleJobSpec) -> str: ...

    def parse_job_id(self, out: str) -> str | None: ...

    def status_command(self, job_ids: list[str]) -> list[str]: ...

    def parse_status(self, out: str) -> dict[str, str]: ...

    def release_command(self, job_id: str, release: list[str], keep: list[str]) -> list[str]: ...
