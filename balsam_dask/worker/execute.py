"""What runs on the worker for a balsam task: attempts, retries, timeouts, apps, results.

The client submits ``run_python``/``run_app`` as the Dask task's function; the task's
:class:`~balsam_dask.spec.TaskSpec` and the scheduler plugin's dispatch decision (attempt
number, GPU ids, MPI hosts) arrive as the task's annotations. Each failed or timed-out
attempt is reported to the scheduler plugin (``Worker.log_event``) before the next starts,
and a durable task's result is reported before the task returns, so the provenance store
holds every attempt and the result even if the client dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
import re
import shlex
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from balsam_dask.apps import AppResult
from balsam_dask.daskconfig import user_traceback
from balsam_dask.errors import AppError, HookError, TaskKilled, TaskTimeout
from balsam_dask.function import PickledFunction, unpack
from balsam_dask.payload import dump_value
from balsam_dask.private import private_dir, write_private
from balsam_dask.protocol import (
    DISPATCH_ANNOTATION,
    PARENT_ANNOTATION,
    RESCHEDULE_REASON,
    SPEC_ANNOTATION,
    TOPIC,
    task_spec,
)
from balsam_dask.spec import TaskSpec
from balsam_dask.template import render
from balsam_dask.worker.context import TaskContext, current_site, set_current
from balsam_dask.worker.process import ProcessResult, run_process
from balsam_dask.worker.runtime import NodeRuntime, RunHandle, get_runtime
from balsam_dask.worker.threads import POOL_VARIABLES

#: Results up to this size (pickled) are stored in the database; larger ones in a file.
INLINE_RESULT_LIMIT = 64 * 1024
ERROR_TAIL = 4000


@dataclass(frozen=True)
class Handlers:
    """User callbacks deciding what happens after a failed or timed-out attempt.

    ``on_error(exc, attempt) -> bool`` and ``on_timeout(attempt) -> bool``: True retries.
    Without a handler: retry while attempts remain (``retries``, ``timeout_retries``). A
    handler raising ``HookError`` (a database task's hook) fails the task with that error."""

    on_error: Callable[[BaseException, int], bool] | None = None
    on_timeout: Callable[[int], bool] | None = None


@dataclass(frozen=True)
class AppCall:
    command: str | tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    check: bool = True


class _TimedOut(Exception):
    pass


class _Killed(Exception):
    pass


def _report(msg: dict[str, Any]) -> None:
    from distributed import get_worker

    try:
        get_worker().log_event(TOPIC, msg)
    except ValueError:  # not on a worker (called directly): nothing to report to
        pass


def _tail(text: str) -> str:
    return text[-ERROR_TAIL:]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text)[:60].strip(".") or "task"


def task_label(ctx: TaskContext) -> str:
    """A file name unique to the task that a person can find: ``<name>-<task id>``. The name
    is the task's ``name=`` or its key's first word (the function's name, ``app``, ``mpi``);
    outside a cluster (no task id) the key's hash stands in for the id."""
    name = _safe_name(ctx.spec.name or ctx.key.partition("-")[0])
    if ctx.task_id is not None:
        return f"{name}-{ctx.task_id}"
    return f"{name}-{hashlib.sha1(ctx.key.encode()).hexdigest()[:12]}"


def task_workdir(rt: NodeRuntime, ctx: TaskContext) -> Path:
    """The task's own work directory (``workdir=`` if the user chose one); whoever creates it
    uses ``private.private_dir`` (readable by its owner only)."""
    if ctx.spec.workdir:
        return Path(ctx.spec.workdir)
    return Path(rt.config.workdir_root) / task_label(ctx)


def task_env(spec: TaskSpec, gpus: tuple[str, ...]) -> dict[str, str]:
    """A task process's environment over the worker's: thread pools sized to its threads per
    rank (Dask's nanny left them at 1), its GPUs, the user's variables."""
    env = dict.fromkeys(POOL_VARIABLES, str(spec.resources.threads_per_rank))
    if spec.resources.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env.update(dict(spec.env))
    return env


def _annotations(key: str) -> dict[str, Any]:
    from distributed import get_worker

    try:
        ts = get_worker().state.tasks.get(key)
    except ValueError:
        return {}
    return (ts.annotations or {}) if ts is not None else {}


def run_attempts(body: Callable[[TaskContext, RunHandle], Any], handlers: Handlers | None, *,
                 task_id: int | None = None, name: str | None = None) -> Any:  # fmt: skip
    """Run ``body(ctx, handle)`` once per attempt until it succeeds or ``handlers`` (or the
    spec's retries) give up: each failed or timed-out attempt reported, the result reported.
    ``task_id``/``name`` (a database task's) replace the dispatch's id and the spec's name."""
    site = current_site()
    report: Callable[[dict[str, Any]], None] = _report
    attach: Callable[[dict[str, Any]], None] = _attach_done
    if site is None:
        from distributed.worker import thread_state

        key = str(getattr(thread_state, "key", "direct-call"))
        ann = _annotations(key)
        spec = task_spec(ann.get(SPEC_ANNOTATION))
        dispatch: dict[str, Any] = ann.get(DISPATCH_ANNOTATION) or {}
    else:
        key, spec, dispatch, report, attach = site.key, site.spec, site.dispatch, site.report, site.done
    if name is not None and spec.name != name:
        spec = dataclasses.replace(spec, name=name)
    handlers = handlers or Handlers()
    rt = get_runtime()
    attempt = int(dispatch.get("attempt", 1))
    gpus = rt.acquire_gpus(spec.resources.gpus, dispatch.get("gpus", ()))
    handle = rt.register(key)
    errors = timeouts = 0
    try:
        while True:
            ctx = TaskContext(key, spec, attempt, gpus, tuple(dispatch.get("hosts", ())), rt.config.name,
                              dispatch.get("task_id") if task_id is None else task_id)  # fmt: skip
            started = time.time()
            set_current(ctx)
            try:
                value = body(ctx, handle)
            except _Killed:
                if handle.reason == RESCHEDULE_REASON:
                    from distributed import Reschedule

                    raise Reschedule() from None
                raise TaskKilled(f"task {key} was killed ({handle.reason})") from None
            except _TimedOut as e:
                timeouts += 1
                retry = _decide(handlers.on_timeout, (attempt,), timeouts <= spec.timeout_retries)
                report(_attempt_report(ctx, "timeout", retry, str(e), str(e)))
                if not retry:
                    raise TaskTimeout(f"task {key}", spec.timeout or 0.0, timeouts) from None
            except Exception as e:
                errors += 1
                retry = _decide(handlers.on_error, (e, attempt), errors <= spec.retries)
                report(_attempt_report(ctx, "error", retry, _tail(f"{type(e).__name__}: {e}"), own_error_tail(e)))
                if not retry:
                    raise
            else:
                _report_done(ctx, spec, value, started, attach, always=site is not None)
                return value
            finally:
                set_current(None)
            attempt += 1
    finally:
        rt.unregister(handle)
        rt.release_gpus(gpus)


def _attempt_report(ctx: TaskContext, kind: str, retry: bool, message: str, tail: str) -> dict[str, Any]:
    """A failed or timed-out attempt, for the record: what it launched, where, how it ended."""
    return {"op": "attempt", "key": ctx.key, "attempt": ctx.attempt, "kind": kind, "retry": retry,
            "message": message, "ts": time.time(), "error_tail": tail, **ctx.launch}  # fmt: skip


def _library_dirs() -> tuple[str, ...]:
    import asyncio
    import concurrent.futures

    import dask
    import distributed

    mods = (dask, distributed, asyncio, concurrent.futures, sys.modules[__name__.partition(".")[0]])
    return (*[os.path.dirname(m.__file__ or "") + os.sep for m in mods], threading.__file__ or "")


def own_error_tail(e: BaseException) -> str:
    """The error as the task's author wants to read it: the traceback's frames of their own
    code (not balsam_dask's, Dask's or the thread pool's), the exception with its notes (an
    app's stderr tail, a remote rank's traceback), at most ERROR_TAIL characters."""
    skip = _library_dirs()
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skip)]
    notes = "".join(f"\n{n}" for n in getattr(e, "__notes__", ()))
    return _tail(f"{''.join(traceback.format_list(frames))}{type(e).__name__}: {e}{notes}")


def _decide(handler: Callable[..., bool] | None, args: tuple[Any, ...], default: bool) -> bool:
    if handler is None:
        return default
    try:
        return bool(handler(*args))
    except HookError:
        raise
    except Exception as e:  # a broken handler fails the task rather than looping
        raise RuntimeError(f"error handler {handler!r} raised {type(e).__name__}: {e}") from e


def _report_done(ctx: TaskContext, spec: TaskSpec, value: Any, started: float,
                 attach: Callable[[dict[str, Any]], None], always: bool = False) -> None:  # fmt: skip
    msg: dict[str, Any] = {"op": "done", "key": ctx.key, "attempt": ctx.attempt, "ts": time.time(),
                           "started": started, "node": ctx.node}  # fmt: skip
    if ctx.gpu_ids:
        msg["gpus"] = list(ctx.gpu_ids)
    msg.update(ctx.launch)
    if spec.durable:
        try:
            data = dump_value(value)
        except Exception as e:
            msg["message"] = f"result not stored: it does not pickle ({type(e).__name__}: {e})"
        else:
            if len(data) <= INLINE_RESULT_LIMIT:
                msg["result"] = data
            else:  # the scheduler signs the file's path with this digest (store/signing.py)
                path = private_dir(get_runtime().config.results_dir) / f"{task_label(ctx)}.pkl"
                write_private(path, data)
                msg["result_ref"] = str(path.absolute())
                msg["result_digest"] = hashlib.sha256(data).digest()
    if always or spec.durable or ctx.gpu_ids or ctx.launch:
        attach(msg)


def _attach_done(msg: dict[str, Any]) -> None:
    """Put the done-report in the task's metadata: the worker sends it to the scheduler inside
    its task-finished message (no message of its own, nothing kept in the event log)."""
    from distributed import get_worker
    from distributed.worker import thread_state

    key = getattr(thread_state, "key", None)
    try:
        ts = get_worker().state.tasks.get(key) if key is not None else None
    except ValueError:  # not on a worker (called directly): nothing to report to
        return
    if ts is not None:
        ts.metadata[TOPIC] = msg


# ---------------------------------------------------------------- bodies


def command_argv(command: str | tuple[str, ...], params: dict[str, Any]) -> list[str]:
    """A template string is rendered (every parameter shell-quoted); an argv list runs
    unmodified (braces in it are literal: ``awk '{print $1}'``, f-strings...)."""
    return render(command, params) if isinstance(command, str) else list(command)


def check_process(res: ProcessResult, spec: TaskSpec, handle: RunHandle) -> None:
    if res.killed:
        raise _Killed(handle.reason or "killed")
    if res.timed_out:
        raise _TimedOut(f"timed out after {spec.timeout:g}s (stderr tail: {res.stderr_tail[-500:]})")


def python_isolated(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                     ctx: TaskContext, handle: RunHandle) -> Any:  # fmt: skip
    """One attempt of a Python function in a process of its own (its cwd the work directory)."""
    rt = get_runtime()
    workdir = private_dir(task_workdir(rt, ctx))
    ctx.launch["workdir"] = str(workdir.absolute())
    call, out = workdir / f"call.{ctx.attempt}.pkl", workdir / f"out.{ctx.attempt}.pkl"
    call.write_bytes(cloudpickle.dumps((fn, args, kwargs, ctx)))
    out.unlink(missing_ok=True)
    env = task_env(ctx.spec, ctx.gpu_ids)
    # the function may live in a module only the worker's sys.path finds
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p and os.path.isdir(p)])
    try:
        res = run_process(
            [sys.executable, "-m", "balsam_dask.worker.pyrun", str(call), str(out)],
            workdir=workdir, env=env, timeout=ctx.spec.timeout,
            kill_event=handle.kill_event, stdout_name=f"stdout.{ctx.attempt}.txt",
            stderr_name=f"stderr.{ctx.attempt}.txt",
        )  # fmt: skip
        check_process(res, ctx.spec, handle)
        if not out.exists():
            raise RuntimeError(
                f"isolated function exited with code {res.returncode} without a result; stderr tail:\n{res.stderr_tail}"
            )
        outcome = cloudpickle.loads(out.read_bytes())
    finally:
        call.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    if outcome[0] == "ok":
        return outcome[1]
    exc, tb = outcome[1], outcome[2]
    with contextlib.suppress(Exception):
        exc.add_note(f"in an isolated process on {ctx.node}:\n{tb}")
    raise exc


@user_traceback
def run_python(task_fn: Callable[..., Any] | PickledFunction, handlers: Handlers | None, *args: Any,
               **kwargs: Any) -> Any:  # fmt: skip
    """A Python function as a balsam task (in the worker's thread, or isolated); ``task_fn``
    as :func:`balsam_dask.function.pack` made it."""

    def body(ctx: TaskContext, handle: RunHandle) -> Any:
        fn = unpack(task_fn)  # inside the attempt: a function that cannot be loaded fails it
        if ctx.spec.runs_in_subprocess:
            return python_isolated(fn, args, kwargs, ctx, handle)
        return python_in_thread(fn, args, kwargs, ctx)

    return run_attempts(body, handlers)


def python_in_thread(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ctx: TaskContext) -> Any:
    """One attempt of a Python function in the worker's thread."""
    import dask

    # tasks it submits are its children; its BLAS/OpenMP pools get its cores
    with dask.annotate(**{PARENT_ANNOTATION: ctx.key}), get_runtime().pools.limit(ctx.spec.resources.cores):
        value = fn(*args, **kwargs)
        return _awaited(value) if inspect.isawaitable(value) else value


def _awaited(value: Any) -> Any:
    """An ``async def`` task's result: awaited on its worker's event loop, as Dask runs them."""
    from distributed import get_worker
    from distributed.utils import sync

    async def wait() -> Any:
        return await value

    try:
        loop = get_worker().loop
    except ValueError:  # called directly, not on a worker
        import asyncio

        return asyncio.run(wait())
    return sync(loop, wait)


@user_traceback
def run_app(app: AppCall, handlers: Handlers | None) -> AppResult:
    """An unmodified executable as a balsam task."""
    return run_attempts(lambda ctx, handle: app_attempt(app, ctx, handle), handlers)


def app_attempt(app: AppCall, ctx: TaskContext, handle: RunHandle) -> AppResult:
    """One attempt of an app: its command rendered with its parameters, run in its work directory."""
    argv = command_argv(app.command, app.params)
    workdir = task_workdir(get_runtime(), ctx)
    ctx.launch.update(command=shlex.join(argv), workdir=str(workdir.absolute()))
    suffix = "" if ctx.attempt <= 1 else f".{ctx.attempt}"
    res = run_process(
        argv, workdir=workdir, env=task_env(ctx.spec, ctx.gpu_ids), timeout=ctx.spec.timeout,
        kill_event=handle.kill_event, stdout_name=f"stdout{suffix}.txt", stderr_name=f"stderr{suffix}.txt",
    )  # fmt: skip
    ctx.launch["return_code"] = res.returncode
    check_process(res, ctx.spec, handle)
    result = AppResult(
        tuple(argv), res.returncode, res.duration, res.started_at, res.ended_at, workdir.absolute(),
        res.stdout_path, res.stderr_path, res.stdout_tail, res.stderr_tail, ctx.gpu_ids,
    )  # fmt: skip
    if app.check and res.returncode != 0:
        raise AppError(shlex.join(argv), res.returncode, res.stderr_tail, str(workdir))
    return result
