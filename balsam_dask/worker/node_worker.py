"""Start one node-worker inside a batch job: ``python -m balsam_dask.node_worker``.

The job script runs this once per node (``srun --overlap --ntasks-per-node=1``,
``mpiexec -ppn 1``, ``blaunch``...). It works out which node it is on from the batch
system's environment, describes the node (:class:`~balsam_dask.protocol.NodeConfig`: cores,
GPUs, allocation id, allocation end) and execs ``dask worker`` with the balsam preload,
named ``<prefix>-<node index>`` so the cluster knows which job each worker belongs to, and
with a lifetime that makes it leave ``--drain-margin`` seconds before the allocation ends.
The worker and its nanny listen on this node's address on the route to the scheduler (the
address they give the others) unless the options for ``dask worker`` after ``--`` choose
(``--host``, ``--interface``, ``--listen-address``); TLS options (``--tls-ca-file``...) go there too.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Sequence

from balsam_dask.network import WORKER_LISTEN_OPTIONS, routable_ip
from balsam_dask.protocol import ENV_VAR, PRELOAD, NodeConfig

#: Where each batch system says which node of the job this is, and its host name.
INDEX_VARS = ("SLURM_NODEID", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "BALSAM_DASK_NODE_INDEX")
HOST_VARS = ("SLURMD_NODENAME", "BALSAM_DASK_NODE_HOST")
#: The launcher's connection, which a task must not inherit. ``SLURM_STEP_ID``: Open MPI takes a
#: program that sees it for a rank ``srun`` started and, with no PMI of Slurm's, aborts in
#: ``MPI_Init``; without it a task's program runs as a singleton.
_LAUNCHER_VARS = frozenset({"PMI_FD", "PMI_PORT", "PMI_RANK", "PMI_SIZE", "PMI_ID", "HYDI_CONTROL_FD", "SLURM_STEP_ID",
                            "SLURM_STEPID"})  # fmt: skip


def _first(names: Sequence[str]) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def _margin(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def build_command(args: argparse.Namespace, now: float) -> tuple[list[str], NodeConfig]:
    index = _first([args.index_env] if args.index_env else INDEX_VARS) or "0"
    host = _first([args.host_env] if args.host_env else HOST_VARS) or socket.gethostname()
    alloc = _first([args.alloc_env]) if args.alloc_env else None
    name = f"{args.name_prefix}-{index}"
    config = NodeConfig(
        name=name, alloc_id=alloc or args.alloc or args.name_prefix, cores=args.cores, gpus=args.gpus,
        end_time=args.end, host=host, workdir_root=args.workdir, results_dir=args.results_dir,
        launcher=args.launcher, bind=args.bind,
    )  # fmt: skip
    cmd = [
        args.python or sys.executable, "-m", "distributed.cli.dask_worker", args.scheduler,
        "--name", name, "--nthreads", str(args.cores), "--nworkers", "1", "--preload", PRELOAD,
        "--no-dashboard", "--nanny",
    ]  # fmt: skip
    if args.memory_limit:
        cmd += ["--memory-limit", args.memory_limit]
    if args.end is not None and args.drain_margin is not None:
        lifetime = int(args.end - args.drain_margin - now)
        cmd += ["--lifetime", f"{max(lifetime, 1)}s"]
    return cmd + listen_options(args.scheduler, args.worker_args) + list(args.worker_args), config


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of ``name`` in ``dask worker`` options (``--name value`` or ``--name=value``)."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def listen_options(scheduler: str, worker_args: Sequence[str]) -> list[str]:
    """``dask worker`` options that keep the worker, its nanny and its HTTP server off every
    interface (Dask's default): on this node's address on the route to the scheduler, the
    address the worker gives the others anyway, unless ``worker_args`` choose."""
    from distributed.utils import get_ip_interface

    out: list[str] = []
    host = _option(worker_args, "--host")
    if not any(_option(worker_args, o) for o in WORKER_LISTEN_OPTIONS):
        host = routable_ip(scheduler)
        out += ["--host", host]
    elif host is None and (interface := _option(worker_args, "--interface")):
        host = get_ip_interface(interface)
    # the HTTP server (health, metrics) listens on every interface unless told where
    if host and ":" not in host and _option(worker_args, "--dashboard-address") is None:
        out += ["--dashboard-address", f"{host}:0"]
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options of ``python -m balsam_dask.node_worker``; those after ``--`` are
    ``args.worker_args``, for ``dask worker``."""
    p = argparse.ArgumentParser(prog="python -m balsam_dask.node_worker")
    p.add_argument("scheduler")
    p.add_argument("--name-prefix", required=True, help="the job's name; the worker is <prefix>-<node index>")
    p.add_argument("--cores", type=int, required=True)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--end", type=float, default=None, help="allocation end, epoch seconds")
    p.add_argument("--drain-margin", type=_margin, default=60.0,
                   help="leave this many seconds before the end ('none': stay until stopped)")  # fmt: skip
    p.add_argument("--alloc", default=None, help="allocation id (default: from --alloc-env)")
    p.add_argument("--alloc-env", default=None, help="variable holding the batch job id, e.g. SLURM_JOB_ID")
    p.add_argument("--index-env", default=None, help="variable holding this node's index in the job")
    p.add_argument("--host-env", default=None, help="variable holding this node's host name")
    p.add_argument("--launcher", default=None, help="MPI launcher for tasks on this allocation")
    p.add_argument("--bind", default=None, choices=["core", "none"], help="MPI rank binding (default: whole nodes)")
    p.add_argument("--workdir", default="balsam_workdirs")
    p.add_argument("--results-dir", default="balsam_results")
    p.add_argument("--memory-limit", default=None)
    p.add_argument("--python", default=None)
    p.epilog = "Arguments after -- go to `dask worker` unchanged."
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = p.parse_args(argv)
    args.worker_args = extra
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cmd, config = build_command(args, time.time())
    os.environ[ENV_VAR] = config.to_env()
    # the launcher that started us (mpiexec, PALS, srun) left its connection in our environment:
    # a task importing mpi4py would try to join *that* job and abort; tasks start their own
    for name in list(os.environ):
        if name in _LAUNCHER_VARS or name.startswith(("PMIX_", "PALS_", "HYDI_")):
            del os.environ[name]
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
