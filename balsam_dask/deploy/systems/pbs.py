"""PBS Professional / OpenPBS: ensemble job scripts, submission and status parsing. Pure.
(Design notes: docs/ARCHITECTURE.md, deploy/systems/pbs.py.)
"""

from __future__ import annotations

import re

from balsam_dask.deploy.jobs import EnsembleJobSpec, end_time_line, node_worker_argv, shell_join

NAME = "pbs"
SUBMIT = "qsub"
CANCEL = "qdel"
STATUS = "qstat"
SUBMIT_READS_STDIN = False
#: ``qsub`` prints ``<sequence number>.<server name>`` alone on a line (``1234.pbs01``).
JOB_ID_REGEXP = r"(?m)^\s*(?P<job_id>\d+(?:\[\d*\])?(?:\.[\w.-]+)?)\s*$"
#: ``job_state`` letters, as the allocation states of the store (F is refined by Exit_status).
STATES = {
    "Q": "QUEUED", "H": "QUEUED", "W": "QUEUED", "T": "QUEUED", "M": "QUEUED",
    "R": "RUNNING", "B": "RUNNING", "E": "RUNNING", "S": "RUNNING", "U": "RUNNING",
    "F": "FINISHED", "X": "FINISHED", "C": "FINISHED",
}  # fmt: skip
#: ``Exit_status`` PBS Pro gives a job it killed at its walltime (``JOB_EXEC_KILL_WALLTIME``).
EXIT_WALLTIME = -29
#: The node index and host name each node-worker reads (set by ``mpiexec`` on every rank).
INDEX_ENV = "PMI_RANK"
HOST_ENV = "PMI_HOSTNAME"
#: Hydra's handles on the node-worker's own launch: left set, MPI_Init in a task on the
#: worker (mpi4py imported by a serial task) would talk to a stale descriptor and abort.
PMI_CONNECTION = ("PMI_FD", "PMI_PORT", "HYDI_CONTROL_FD")


def job_script(job: EnsembleJobSpec) -> str:
    chunk = f"{job.nodes}:ncpus={job.cores_per_node}"
    if job.gpus_per_node:
        chunk += f":ngpus={job.gpus_per_node}"
    lines = [
        "#!/usr/bin/env bash",
        f"#PBS -N {job.name}",
        f"#PBS -l select={chunk}:mpiprocs=1",
        "#PBS -l place=scatter:excl",
        f"#PBS -l walltime={job.walltime_hms}",
    ]
    if job.queue:
        lines.append(f"#PBS -q {job.queue}")
    if job.account:
        lines.append(f"#PBS -A {job.account}")
    lines.append("#PBS -j oe")
    if job.log_directory:
        lines.append(f"#PBS -o {job.log_directory}/{job.name}.out")
    lines += [f"#PBS {d}" for d in job.job_extra_directives]
    lines += ["", 'cd "$PBS_O_WORKDIR"', *job.job_script_prologue, end_time_line(job)]
    lines.append("HOSTS=$(awk '!seen[$0]++' \"$PBS_NODEFILE\" | paste -sd, -)")
    worker = node_worker_argv(job, alloc_env="PBS_JOBID", index_env=INDEX_ENV, host_env=HOST_ENV, end='"$END"')
    mpiexec = ["mpiexec", "-n", str(job.nodes), "--ppn", "1", "--hosts", '"$HOSTS"', "env"]
    mpiexec += [w for v in PMI_CONNECTION for w in ("-u", v)]
    lines.append(f"exec {shell_join(mpiexec + worker)}")
    return "\n".join(lines) + "\n"


def release_command(job_id: str, release: list[str], keep: list[str]) -> list[str]:
    """Release sister nodes of a running job (PBS Pro; never the primary execution host)."""
    return ["pbs_release_nodes", "-j", job_id, *release]


def parse_job_id(out: str) -> str | None:
    m = re.search(JOB_ID_REGEXP, out)
    return m.group("job_id") if m else None


def status_command(job_ids: list[str]) -> list[str]:
    return [STATUS, "-x", "-f", *job_ids]


def _state(job_state: str, exit_status: str | None) -> str:
    state = STATES.get(job_state, job_state)
    if state != "FINISHED" or exit_status is None:
        return state
    try:
        code = int(exit_status)
    except ValueError:
        return "FAILED"
    return "FINISHED" if code == 0 else "TIMEOUT" if code == EXIT_WALLTIME else "FAILED"


def _aliases(job_id: str) -> list[str]:
    """The id and its shorter forms (``1.a.b`` -> ``1.a.b``, ``1.a``, ``1``): qsub and qstat
    may print the server's name more or less fully qualified."""
    parts = job_id.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def parse_status(out: str) -> dict[str, str]:
    """``{job id: store state}`` from ``qstat -x -f``; each id is also listed under its
    shorter forms (see :func:`_aliases`), the fullest name winning."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in out.splitlines():
        if line.startswith("Job Id:"):
            jobs.append((line.split(":", 1)[1].strip(), {}))
        elif jobs and line[:1] in (" ", "\t") and " = " in line:
            key, value = line.strip().split(" = ", 1)
            jobs[-1][1].setdefault(key.lower(), value.strip())
    states: dict[str, str] = {}
    for job_id, attrs in jobs:
        if not job_id or "job_state" not in attrs:
            continue
        state = _state(attrs["job_state"], attrs.get("exit_status"))
        for alias in _aliases(job_id):
            states.setdefault(alias, state)
    return states
