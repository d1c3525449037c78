"""Ensemble batch jobs: one job holds several nodes, one node-worker per node. Pure.

:class:`EnsembleJobSpec` says what one job is (nodes, walltime, queue, account, extra
directives, prologue, the worker's node shape); each batch system's module turns it into
the exact job script text (``slurm.py``, ``pbs.py``, ``lsf.py``) and parses its commands'
output. Nothing here runs a command.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from balsam_dask import validate
from balsam_dask.errors import InvalidSpec
from balsam_dask.spec import check_bind, parse_duration


def format_hms(seconds: float) -> str:
    """``HH:MM:SS`` (hours may exceed 24), rounded up to the minute's second."""
    s = int(-(-seconds // 1))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass(frozen=True)
class EnsembleJobSpec:
    """One ensemble job: ``nodes`` node-workers of ``cores_per_node`` cores for ``walltime``."""

    name: str  # job name; also the prefix of its workers' names (<name>-<node index>)
    scheduler: str  # the Dask scheduler's address, as the compute nodes reach it
    nodes: int
    walltime: float  # seconds
    cores_per_node: int
    gpus_per_node: int = 0
    memory_per_node: str | None = None
    queue: str | None = None
    account: str | None = None
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    python: str = field(default_factory=lambda: sys.executable)
    launcher: str | None = None  # the MPI launcher tasks of this job use (None: detect on the node)
    bind: str | None = None  # MPI rank binding on the job's nodes (spec.BIND_CHOICES; None: whole nodes)
    log_directory: str | None = None
    # workers leave this many seconds before the walltime ends; None: they stay until the batch
    # system stops them (their running tasks are then recorded RUN_TIMEOUT and run elsewhere)
    drain_margin: float | None = 60.0
    workdir: str = "balsam_workdirs"
    results_dir: str = "balsam_results"
    worker_extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in " /'\""):
            raise InvalidSpec(f"job name {self.name!r} is invalid: use letters, digits, '-' and '_'")
        for label, value, lo in (("nodes", self.nodes, 1), ("cores_per_node", self.cores_per_node, 1),
                                 ("gpus_per_node", self.gpus_per_node, 0)):  # fmt: skip
            validate.integer(label, value, f"{label}={max(lo, 4)}", lo)
        object.__setattr__(self, "walltime", parse_duration("walltime", self.walltime))
        if self.drain_margin is not None and not 0 <= self.drain_margin < self.walltime:
            raise InvalidSpec(
                f"drain_margin={self.drain_margin!r} is invalid for walltime={self.walltime:g}s: "
                "use a margin >= 0 and well under the walltime, e.g. drain_margin=60"
            )
        object.__setattr__(
            self, "job_extra_directives",
            validate.strings("job_extra_directives", self.job_extra_directives, "['--constraint=knl']"),
        )  # fmt: skip
        object.__setattr__(
            self,
            "job_script_prologue",
            validate.strings("job_script_prologue", self.job_script_prologue, "['module load x']"),
        )
        object.__setattr__(
            self, "worker_extra_args", validate.strings("worker_extra_args", self.worker_extra_args, "[]")
        )
        check_bind(self.bind)

    @property
    def walltime_hms(self) -> str:
        return format_hms(self.walltime)


def node_worker_argv(
    job: EnsembleJobSpec, *, alloc_env: str, index_env: str | None, host_env: str | None, end: str,
    default_launcher: str | None = None,
) -> list[str]:  # fmt: skip
    """The command that starts one node-worker (``end``: a shell expression for the
    allocation's end in epoch seconds, e.g. ``"$END"``; ``default_launcher``: the batch
    system's own MPI launcher, used unless the job names one)."""
    argv = [
        job.python, "-m", "balsam_dask.node_worker", job.scheduler, "--name-prefix", job.name,
        "--cores", str(job.cores_per_node), "--gpus", str(job.gpus_per_node), "--end", end,
        "--drain-margin", "none" if job.drain_margin is None else f"{job.drain_margin:g}", "--alloc-env", alloc_env,
        "--workdir", job.workdir, "--results-dir", job.results_dir,
    ]  # fmt: skip
    if index_env:
        argv += ["--index-env", index_env]
    if host_env:
        argv += ["--host-env", host_env]
    if job.launcher or default_launcher:
        argv += ["--launcher", job.launcher or default_launcher or ""]
    if job.bind:
        argv += ["--bind", job.bind]
    if job.memory_per_node:
        argv += ["--memory-limit", job.memory_per_node]
    if job.worker_extra_args:
        argv += ["--", *job.worker_extra_args]
    return argv


def shell_join(argv: Sequence[str]) -> str:
    """Quote every word, except ``"$VAR"`` words that must expand in the job script."""
    return " ".join(a if a.startswith('"$') and a.endswith('"') else shlex.quote(a) for a in argv)


def end_time_line(job: EnsembleJobSpec) -> str:
    """Shell line computing the allocation's end (job start + walltime) as ``$END``."""
    return f"END=$(( $(date +%s) + {int(job.walltime)} ))"
