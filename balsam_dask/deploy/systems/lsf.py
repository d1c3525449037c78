"""IBM Spectrum LSF: ensemble job scripts, submission and status parsing. Pure.
(Design notes: docs/ARCHITECTURE.md, deploy/systems/lsf.py.)
"""

from __future__ import annotations

import re

from balsam_dask.deploy.jobs import EnsembleJobSpec, end_time_line, node_worker_argv, shell_join

NAME = "lsf"
SUBMIT = "bsub"
CANCEL = "bkill"
STATUS = "bjobs"
SUBMIT_READS_STDIN = True
#: ``bsub`` prints ``Job <1234> is submitted to queue <normal>.`` (or ``default queue``).
JOB_ID_REGEXP = r"Job <(?P<job_id>\d+(?:\[\d+\])?)> is submitted"
#: ``bjobs`` STAT values, as the allocation states of the store.
STATES = {
    "PEND": "QUEUED", "PSUSP": "QUEUED", "WAIT": "QUEUED", "PROV": "QUEUED",
    "RUN": "RUNNING", "USUSP": "RUNNING", "SSUSP": "RUNNING", "UNKWN": "RUNNING",
    "DONE": "FINISHED", "EXIT": "FAILED", "ZOMBI": "FAILED",
}  # fmt: skip
INDEX_ENV = "BALSAM_DASK_NODE_INDEX"
HOST_ENV = "BALSAM_DASK_NODE_HOST"


def walltime_hhmm(seconds: float) -> str:
    """LSF's ``-W [hours:]minutes``, rounded up to the minute."""
    minutes = int(-(-seconds // 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def job_script(job: EnsembleJobSpec) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"#BSUB -J {job.name}",
        f"#BSUB -n {job.nodes}",
        '#BSUB -R "span[ptile=1]"',
        "#BSUB -x",
        f"#BSUB -W {walltime_hhmm(job.walltime)}",
    ]
    if job.queue:
        lines.append(f"#BSUB -q {job.queue}")
    if job.account:
        lines.append(f"#BSUB -P {job.account}")
    if job.gpus_per_node:
        lines.append(f'#BSUB -gpu "num={job.gpus_per_node}"')
    if job.log_directory:
        lines.append(f"#BSUB -o {job.log_directory}/{job.name}-%J.out")
        lines.append(f"#BSUB -e {job.log_directory}/{job.name}-%J.err")
    lines += [f"#BSUB {d}" for d in job.job_extra_directives]
    lines += ["", *job.job_script_prologue, end_time_line(job)]
    worker = node_worker_argv(job, alloc_env="LSB_JOBID", index_env=INDEX_ENV, host_env=HOST_ENV, end='"$END"')
    launch = f'blaunch "$host" env {INDEX_ENV}="$i" {HOST_ENV}="$host" LSB_JOBID="$LSB_JOBID"'
    lines += [
        "i=0",
        "for host in $(echo $LSB_MCPU_HOSTS | awk '{for (k = 1; k < NF; k += 2) print $k}'); do",
        f"  {launch} {shell_join(worker)} &",
        "  i=$((i + 1))",
        "done",
        "wait",
    ]
    return "\n".join(lines) + "\n"


def release_command(job_id: str, release: list[str], keep: list[str]) -> list[str]:
    """Release hosts of a running job (never its first execution host). LSF resizes only
    resizable jobs (submitted with an application profile with ``RESIZABLE_JOBS = Y``:
    ``job_extra_directives=["-app <profile>"]``); elsewhere ``bresize`` refuses, the refusal
    is recorded in the allocation's message and the host stays charged until the job ends."""
    return ["bresize", "release", " ".join(release), job_id]


def parse_job_id(out: str) -> str | None:
    m = re.search(JOB_ID_REGEXP, out)
    return m.group("job_id") if m else None


def status_command(job_ids: list[str]) -> list[str]:
    return [STATUS, "-noheader", "-o", "jobid stat", *job_ids]


def parse_status(out: str) -> dict[str, str]:
    """``{job id: store state}`` from ``bjobs -noheader -o "jobid stat"``."""
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and re.fullmatch(r"\d+(?:\[\d+\])?", parts[0]) and parts[1].isupper():
            states[parts[0]] = STATES.get(parts[1], parts[1])
    return states
