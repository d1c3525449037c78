"""MPI tasks on the worker: commands or Python functions launched across the dispatched hosts.

The scheduler plugin dispatches an MPI task to the leader of the nodes it reserved and puts
their host names in the dispatch annotation; the leader runs the launcher (mpiexec, srun,
...) with that host list, through the same process runner as apps (own process group,
timeouts, kill). A Python function runs on every rank (``fn(comm, *args)``); rank 0's value
is the result, and an exception on any rank fails the task with that rank's traceback.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from balsam_dask.apps import AppResult
from balsam_dask.daskconfig import user_traceback
from balsam_dask.errors import AppError, InvalidSpec, MPITaskError
from balsam_dask.mpi_tasks.detect import default_launcher, mismatch_note
from balsam_dask.mpi_tasks.launchers.base import LaunchSpec
from balsam_dask.private import private_dir
from balsam_dask.worker.context import TaskContext
from balsam_dask.worker.execute import (
    Handlers,
    check_process,
    command_argv,
    run_attempts,
    task_env,
    task_workdir,
)
from balsam_dask.worker.process import run_process
from balsam_dask.worker.runtime import RunHandle, get_runtime

#: Seconds between SIGTERM and SIGKILL when stopping a launcher (it forwards the
#: signal to its ranks on every node).
MPI_GRACE = 3.0


@dataclass(frozen=True)
class MPICall:
    command: str | tuple[str, ...] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fn: Callable[..., Any] | None = None
    check: bool = True


def _program_exists(program: str, workdir: Path) -> bool:
    if os.sep in program:
        path = Path(program) if os.path.isabs(program) else workdir / program
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(program) is not None


@user_traceback
def run_mpi(call: MPICall, handlers: Handlers | None, *args: Any, **kwargs: Any) -> Any:
    """An MPI program or Python function as a balsam task."""
    return run_attempts(lambda ctx, handle: mpi_attempt(call, args, kwargs, ctx, handle), handlers)


def mpi_attempt(call: MPICall, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: TaskContext,
                handle: RunHandle) -> Any:  # fmt: skip
    """One attempt of an MPI task: the launcher run across the dispatched hosts."""
    rt = get_runtime()
    spec = ctx.spec
    launcher = default_launcher(spec.launcher or rt.config.launcher)
    hosts = ctx.hosts or (rt.host,)
    workdir = private_dir(task_workdir(rt, ctx).absolute())
    env = task_env(spec, ctx.gpu_ids)
    outdir = workdir / f"mpi.{ctx.attempt}"
    if call.fn is not None:
        private_dir(outdir)
        for old in outdir.glob("*.pkl"):
            old.unlink()
        call_path = outdir / "call.pkl"
        call_path.write_bytes(cloudpickle.dumps((call.fn, args, kwargs, ctx)))
        argv = [sys.executable, "-m", "balsam_dask.worker.mpi_call", str(call_path), str(outdir)]
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p and os.path.isdir(p)])
    else:
        assert call.command is not None
        argv = command_argv(call.command, call.params)
        if not _program_exists(argv[0], workdir):
            raise InvalidSpec(
                f"executable {argv[0]!r} not found on {rt.config.name} (PATH={os.environ.get('PATH', '')}); "
                "give its full path or install it on the nodes"
            )
    bind = spec.bind or rt.config.bind
    # whole nodes are bound; ranks of tasks that share a node are not
    cpu_bind = (spec.resources.nodes > 1 or spec.resources.cores >= rt.config.cores) if bind is None else bind == "core"
    lspec = LaunchSpec(tuple(argv), spec.resources, env=spec.env, extra_args=spec.mpi_args,
                       cpu_bind=cpu_bind, gpu_ids=ctx.gpu_ids)  # fmt: skip
    command = launcher.command(lspec, hosts)
    ctx.launch.update(command=shlex.join(command), workdir=str(workdir))
    env.update(launcher.environ(lspec, hosts))
    suffix = "" if ctx.attempt <= 1 else f".{ctx.attempt}"
    res = run_process(
        command, workdir=workdir, env=env, timeout=spec.timeout, kill_event=handle.kill_event,
        stdout_name=f"stdout{suffix}.txt", stderr_name=f"stderr{suffix}.txt", grace=MPI_GRACE,
        unset=[k for k in launcher.clear_env(os.environ) if k not in env],
    )  # fmt: skip
    ctx.launch["return_code"] = res.returncode
    check_process(res, spec, handle)
    if call.fn is not None:
        errors = sorted(outdir.glob("error.*.pkl"), key=lambda p: int(p.stem.split(".")[1]))
        if errors:
            _, rank, exc_type, message, tb = cloudpickle.loads(errors[0].read_bytes())
            raise MPITaskError(rank, exc_type, message, tb)
        result = outdir / "result.pkl"
        if not result.exists():
            raise RuntimeError(
                f"MPI job {' '.join(command[:6])}... exited with code {res.returncode} without a result; "
                f"stderr tail:\n{res.stderr_tail}"
            )
        return cloudpickle.loads(result.read_bytes())[1]
    out = AppResult(
        tuple(command), res.returncode, res.duration, res.started_at, res.ended_at, workdir,
        res.stdout_path, res.stderr_path, res.stdout_tail, res.stderr_tail, ctx.gpu_ids,
    )  # fmt: skip
    if call.check and res.returncode != 0:
        hint = mismatch_note(launcher, argv[0]) or ""
        raise AppError(shlex.join(command), res.returncode, res.stderr_tail, str(workdir), hint)
    return out
