"""Slurm: ensemble job scripts, submission and status parsing.

The job takes its nodes whole (``--exclusive``: MPI task steps need every CPU of the nodes)
and starts one node-worker per node as a job step with ``--overlap``, so the task steps
(``srun`` launches of MPI tasks) can use the CPUs the long-running worker step holds.
The walltime is ``--time``; workers leave ``drain_margin`` seconds before it ends.
"""

from __future__ import annotations

import re

from balsam_dask.deploy.jobs import EnsembleJobSpec, end_time_line, node_worker_argv, shell_join

NAME = "slurm"
SUBMIT = "sbatch"
CANCEL = "scancel"
STATUS = "squeue"
SUBMIT_READS_STDIN = False
JOB_ID_REGEXP = r"(?P<job_id>\d+)"
#: squeue's %T states, as the allocation states of the store.
STATES = {
    "PENDING": "QUEUED", "CONFIGURING": "QUEUED", "RUNNING": "RUNNING", "COMPLETING": "RUNNING",
    "COMPLETED": "FINISHED", "CANCELLED": "CANCELLED", "TIMEOUT": "TIMEOUT", "FAILED": "FAILED",
    "NODE_FAIL": "FAILED", "PREEMPTED": "CANCELLED", "OUT_OF_MEMORY": "FAILED", "BOOT_FAIL": "FAILED",
    "DEADLINE": "TIMEOUT", "SUSPENDED": "RUNNING",
}  # fmt: skip


def job_script(job: EnsembleJobSpec) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={job.name}",
        f"#SBATCH --nodes={job.nodes}",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --exclusive",
        f"#SBATCH --time={job.walltime_hms}",
    ]
    if job.queue:
        lines.append(f"#SBATCH --partition={job.queue}")
    if job.account:
        lines.append(f"#SBATCH --account={job.account}")
    if job.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    if job.log_directory:
        lines.append(f"#SBATCH --output={job.log_directory}/{job.name}-%j.out")
    lines += [f"#SBATCH {d}" for d in job.job_extra_directives]
    lines += ["", *job.job_script_prologue, end_time_line(job)]
    worker = node_worker_argv(job, alloc_env="SLURM_JOB_ID", index_env="SLURM_NODEID",
                              host_env="SLURMD_NODENAME", end='"$END"', default_launcher="srun")  # fmt: skip
    srun = ["srun", "--overlap", f"--nodes={job.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=0"]
    lines.append(f"exec {shell_join(srun + worker)}")
    return "\n".join(lines) + "\n"


def release_command(job_id: str, release: list[str], keep: list[str]) -> list[str]:
    """Shrink a running job to the nodes it keeps (a user may shrink their own job; the
    released nodes' job steps are stopped there, the other nodes go on)."""
    return ["scontrol", "update", f"JobId={job_id}", f"NodeList={','.join(keep)}"]


def parse_job_id(out: str) -> str | None:
    m = re.search(JOB_ID_REGEXP, out)
    return m.group("job_id") if m else None


def status_command(job_ids: list[str]) -> list[str]:
    return [STATUS, "--noheader", "--states=all", "--format=%i %T", "--jobs", ",".join(job_ids)]


def parse_status(out: str) -> dict[str, str]:
    """``{job id: store state}`` from ``squeue --format='%i %T'``."""
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            states[parts[0]] = STATES.get(parts[1], parts[1])
    return states
