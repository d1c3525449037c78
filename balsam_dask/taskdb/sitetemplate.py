"""The commented ``site.yaml`` that ``balsam-dask site init`` writes, one per scheduler. Pure.

Every key of a site is in it, with what it is; the local one works on any machine as it is,
the batch ones name the values a site must give (``queue``, ``account``, the node's cores).
"""

from __future__ import annotations

from balsam_dask import validate

SCHEDULERS = ("local", "slurm", "pbs", "lsf")

_EXTRA = {"slurm": "['--constraint=gpu']", "pbs": "['-l filesystems=home:eagle']", "lsf": "['-alloc_flags smt4']"}

_TEMPLATE = """\
# A balsam-dask site: where `balsam-dask serve --site DIR` runs the tasks of a store.
# Written by `balsam-dask site init --scheduler {scheduler}`; check it with `balsam-dask site check DIR`.
# Durations: seconds, "HH:MM:SS" or "30m". Relative paths are relative to this directory.

scheduler: {scheduler}  # local (node processes on this machine), slurm, pbs or lsf
store: balsam.db  # the task database: a SQLite file, or a URL such as postgresql+psycopg://me@dbhost:5432/balsam
workdir: null  # where tasks' work directories and results go (null: this directory)

batch:  # the batch jobs (slurm, pbs, lsf; null or [] with scheduler: local)
  queue: null  # the queue ({queue_note}), e.g. debug
  account: null  # the project or account charged, e.g. myproject
  partition: null  # Slurm's --partition, e.g. gpu (slurm only; give this or queue)
  job_prologue: []  # shell lines run before the node-workers start, e.g. ['module load cuda']
  job_extra_directives: []  # more batch directives, e.g. {extra}
  python: null  # the Python on the compute nodes, e.g. /opt/venv/bin/python (null: the one running serve)

node:  # one node's shape, and how MPI tasks are launched there
  cores_per_node: {cores}  # {cores_note}
  gpus_per_node: 0  # GPUs of one node
  memory_per_node: null  # bytes or a size such as 64GB a node's workers may use (null: {memory_note})
  launcher: null  # MPI tasks' launcher: mpich, openmpi, srun, pals, aprun or jsrun (null: detected on the node),
                  # optionally with its program, e.g. openmpi:/usr/bin/mpirun
  bind: null  # MPI ranks bound to their cores: core or none; null: {bind_note}

local:  # scheduler: local only
  nodes: 2  # emulated nodes (one node-worker process each) on this machine

limits:  # the allocation policy: how many nodes to ask for, for how long, and when to let them go
  min_nodes: 1  # the fewest nodes of one allocation
  max_nodes_per_job: {max_nodes}  # the most nodes of one allocation{max_note}
  max_total_nodes: {max_nodes}  # the most nodes of all allocations at once{max_note}
  max_queued_jobs: 8  # the most allocations waiting in the queue at once
  min_walltime: "00:10:00"  # the shortest allocation asked for
  max_walltime: "06:00:00"  # the longest allocation the queue allows
  idle_timeout: 60  # an allocation (or a node of one) idle this long is given back
  queued_timeout: "04:00:00"  # a queued allocation no task needs any more is cancelled after this long
  default_task_walltime: "01:00:00"  # what a task without a walltime is assumed to take
  job_walltime: {job_walltime}  # an allocation requested without a walltime{job_note}

serve:  # balsam-dask serve
  idle_ttl: 5m  # exit after this long without any task to run (unless persistent)
  lease: 60  # a claimed task's lease, renewed while it runs; an expired lease returns it to the queue
  max_in_flight: null  # the most tasks claimed at once (null: 4 x the site's cores)
  persistent: false  # true: keep running when there is no work

tasks:  # which tasks of the store this site takes
  tags: {{}}  # tags every task must have, e.g. {{experiment: sweep1}} ({{}}: any)
  apps: []  # app names, e.g. [sim, post] ([]: any app, and Python functions)
"""


def site_template(scheduler: str) -> str:
    """A commented ``site.yaml`` for ``scheduler`` (local, slurm, pbs or lsf)."""
    if scheduler not in SCHEDULERS:
        raise validate.invalid("scheduler", scheduler, f"one of {', '.join(SCHEDULERS)}", "scheduler='slurm'")
    local = scheduler == "local"
    return _TEMPLATE.format(
        scheduler=scheduler,
        queue_note="the partition" if scheduler == "slurm" else "batch systems only",
        extra=_EXTRA.get(scheduler, "[]"),
        cores="null" if local else "64",
        cores_note="cores of one node (null: this machine's cores shared by the nodes)" if local
        else "EDIT: the cores of one compute node",
        memory_note="a share of this machine's memory" if local else "all of it",
        bind_note="none (the emulated nodes share one machine)" if local else "bind the ranks of tasks taking whole "
        "nodes",
        max_nodes="null" if local else "64",
        max_note=" (null: local.nodes)" if local else "",
        job_walltime="null" if local else '"00:30:00"',
        job_note=" (null: no end)" if local else "",
    )  # fmt: skip
