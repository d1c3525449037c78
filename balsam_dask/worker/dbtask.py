"""Database tasks on their node: :func:`run_db_task`, what ``balsam-dask serve`` submits.

``serve`` submits ``run_db_task(job)`` with the task's ``TaskSpec`` as its ``balsam``
annotation. It runs through the attempt machinery of a client's tasks
(``execute.run_attempts``: retries, timeouts, kill, the work directory ``<name>-<task id>``,
output files, reports), and around it: before the first attempt the parents' input files,
the stage-in items and the ``pre`` hook; after success the ``post`` hook and the stage-out
items. Hooks are import paths (``pkg.mod:fn``) imported on the node and called with a
:class:`HookContext`; ``error`` and ``timeout`` hooks decide what follows a failed or
timed-out attempt: ``"retry"``, ``"fail"``, ``{"params": {...}}`` (restart with these
parameters merged over the task's) or None (the spec's ``retries``/``timeout_retries``).
An exception in a hook fails the task (:class:`~balsam_dask.errors.HookError`), as does a
failed transfer (:class:`~balsam_dask.errors.StagingError`); neither is retried. The error
a failed task raises carries ``transfers`` and ``new_tasks`` for the service to record.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balsam_dask import validate
from balsam_dask.daskconfig import user_traceback
from balsam_dask.errors import FunctionLoadError, HookError, InvalidSpec, StagingError
from balsam_dask.private import private_dir
from balsam_dask.spec import TaskSpec
from balsam_dask.taskdb import fields
from balsam_dask.taskdb.job import DbJob, DbResult, Transfer
from balsam_dask.template import render
from balsam_dask.worker.context import TaskContext
from balsam_dask.worker.execute import (
    AppCall,
    Handlers,
    app_attempt,
    python_in_thread,
    python_isolated,
    run_attempts,
    task_workdir,
)
from balsam_dask.worker.execute_mpi import MPICall, mpi_attempt
from balsam_dask.worker.runtime import RunHandle, get_runtime
from balsam_dask.worker.staging import bring_inputs, stage_in, stage_out

#: What an ``error`` or ``timeout`` hook may return, for its error message.
DECISIONS = "'retry', 'fail', {'params': {...}} or None"


@dataclass
class HookContext:
    """What a hook sees of its task. ``params`` may be changed (by a ``pre`` hook, before the
    task runs); ``result`` is the task's value (``post``), ``error`` the attempt's exception
    (``error``); :meth:`add_task` asks the service to add a task (a dynamic workflow)."""

    task_id: int
    name: str
    attempt: int
    node: str
    workdir: Path
    params: dict[str, Any]
    spec: TaskSpec
    result: Any = None
    error: BaseException | None = None
    new_tasks: list[dict[str, Any]] = field(default_factory=list)

    def add_task(self, row: Mapping[str, Any]) -> None:
        """A new task row, as ``Store.add_tasks`` takes it (checked there, by the service)."""
        if not isinstance(row, Mapping):
            raise validate.invalid("row", row, "a mapping of task fields", "ctx.add_task({'app': 'sim', "
                                   "'params': {'n': 4}})")  # fmt: skip
        self.new_tasks.append(dict(row))

    def add_tasks(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.add_task(row)


def load_callable(path: str, what: str) -> Callable[..., Any]:
    """The callable at ``pkg.mod:fn``, imported here; a failure names ``what`` and the path."""
    fields.import_path(what, path)
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as e:
        node = get_runtime().config.name
        raise FunctionLoadError(f"{what} {path} cannot be imported on {node}: {type(e).__name__}: {e}") from e
    if not callable(obj):
        raise FunctionLoadError(f"{what} {path} is a {type(obj).__name__}, not a callable")
    return obj


class _DbRun:
    """One ``run_db_task`` call: the job, its current parameters, what it produced so far."""

    def __init__(self, job: DbJob) -> None:
        self.job = job
        self.params = dict(job.params)
        self.transfers: list[Transfer] = []
        self.new_tasks: list[dict[str, Any]] = []
        self.prepared = False
        self.errors = self.timeouts = 0
        self.ctx: TaskContext | None = None
        self.workdir = Path()

    # --- hooks ---
    def hook_context(self, **extra: Any) -> HookContext:
        assert self.ctx is not None
        return HookContext(self.job.task_id, self.job.name, self.ctx.attempt, self.ctx.node, self.workdir,
                           self.params, self.ctx.spec, **extra)  # fmt: skip

    def call_hook(self, kind: str, hctx: HookContext) -> Any:
        path = self.job.hooks.get(kind)
        if path is None:
            return None
        try:
            out = load_callable(path, f"hooks.{kind}")(hctx)
        except Exception as e:
            raise HookError(kind, path, f"raised {type(e).__name__}: {e}") from e
        try:
            self.params = fields.params(hctx.params)
        except InvalidSpec as e:
            raise HookError(kind, path, f"left ctx.params invalid: {e}") from None
        self.new_tasks.extend(hctx.new_tasks)
        return out

    def decide(self, kind: str, hctx: HookContext, default: bool) -> bool:
        if kind not in self.job.hooks:
            return default
        out = self.call_hook(kind, hctx)
        if out is None:
            return default
        if out in ("retry", "fail"):
            return out == "retry"
        if isinstance(out, Mapping) and set(out) == {"params"} and isinstance(out["params"], Mapping):
            self.params.update(fields.params(out["params"]))
            return True
        raise HookError(kind, self.job.hooks[kind], f"returned {out!r}: return {DECISIONS}")

    def on_error(self, exc: BaseException, attempt: int) -> bool:
        if isinstance(exc, (StagingError, HookError)) or self.ctx is None:
            return False  # transfers have their own retries; a broken hook would break again
        self.errors += 1
        return self.decide("error", self.hook_context(error=exc), self.errors <= self.ctx.spec.retries)

    def on_timeout(self, attempt: int) -> bool:
        assert self.ctx is not None
        self.timeouts += 1
        return self.decide("timeout", self.hook_context(), self.timeouts <= self.ctx.spec.timeout_retries)

    # --- the attempt ---
    def body(self, ctx: TaskContext, handle: RunHandle) -> Any:
        self.ctx = ctx
        self.workdir = private_dir(task_workdir(get_runtime(), ctx).absolute())
        ctx.launch["workdir"] = str(self.workdir)
        job = self.job
        if not self.prepared:
            self.prepared = True
            bring_inputs(job.inputs, self.workdir, job.input_mode)
            stage_in(job.stage_in, self.workdir, job.transfer_retries, self.transfers)
            if "pre" in job.hooks:
                self.call_hook("pre", self.hook_context())
        value = self.run(ctx, handle)
        if "post" in job.hooks:
            self.call_hook("post", self.hook_context(result=value))
        stage_out(job.stage_out, self.workdir, job.transfer_retries, self.transfers)
        return value

    def run(self, ctx: TaskContext, handle: RunHandle) -> Any:
        spec, job = ctx.spec, self.job
        if spec.kind == "mpi":
            if job.function is not None:
                call = MPICall(fn=load_callable(job.function, "function"), check=spec.check)
                return mpi_attempt(call, job.args, self.params, ctx, handle)
            return mpi_attempt(MPICall(self.command(spec), self.template_params(spec), check=spec.check), (), {},
                               ctx, handle)  # fmt: skip
        if job.function is not None:
            fn = load_callable(job.function, "function")
            if spec.runs_in_subprocess:
                return python_isolated(fn, job.args, self.params, ctx, handle)
            return python_in_thread(fn, job.args, self.params, ctx)
        return app_attempt(AppCall(self.command(spec), self.template_params(spec), spec.check), ctx, handle)

    def command(self, spec: TaskSpec) -> str | tuple[str, ...]:
        if spec.command is None:
            raise InvalidSpec(f"database task {self.job.task_id} has no function and its spec no command: give "
                              "function='pkg.mod:fn' or an app with a command")  # fmt: skip
        if isinstance(spec.command, tuple):  # an app's argv form: each word a template (checked at submission)
            return tuple(render(spec.command, self.template_params(spec)))
        return spec.command

    def template_params(self, spec: TaskSpec) -> dict[str, Any]:
        return {**dict(spec.params), **self.params}


@user_traceback
def run_db_task(job: DbJob) -> DbResult:
    """Run a database task on this node (see the module's description)."""
    run = _DbRun(job)
    try:
        value = run_attempts(run.body, Handlers(run.on_error, run.on_timeout), task_id=job.task_id, name=job.name)
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            try:  # for the service to record; StagingError's message already names the failed item
                e.transfers = tuple(run.transfers)  # type: ignore[attr-defined]
                e.new_tasks = tuple(run.new_tasks)  # type: ignore[attr-defined]
            except AttributeError:
                pass
        raise
    return DbResult(value, str(run.workdir), tuple(run.transfers), tuple(run.new_tasks))
