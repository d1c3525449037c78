"""``balsam_dask.Client``: Dask's Client, plus resources, apps, provenance and recovery.

``submit``/``map`` take Balsam's keywords (cores, gpus, walltime, timeout, retries, tags,
name, priority, isolate, on_error, on_timeout) and validate them at once: a bad value is
an immediate error naming it, never a task parked forever. Everything else of Dask keeps
working: futures as arguments, ``gather``, ``wait``, ``as_completed``, ``cancel``,
collections' ``compute``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import dask
import distributed
from dask.base import tokenize
from dask.utils import funcname

from balsam_dask import validate
from balsam_dask.client.bundled import BundledClient, BundledFuture
from balsam_dask.client.checks import (
    check_callable,
    check_template,
    dask_placed,
    handlers_of,
    naming_unpicklable,
    reject_dask_placement,
    warn_if_large,
)
from balsam_dask.daskconfig import register as register_dask_config
from balsam_dask.errors import InvalidSpec
from balsam_dask.function import pack, pickled
from balsam_dask.protocol import BUNDLE_RESULTS_OP, SPEC_ANNOTATION
from balsam_dask.spec import NodeShape, Resources, TaskSpec, freeze_pairs
from balsam_dask.worker.execute import AppCall, run_app, run_python

_INFO_TTL = 2.0


class Client(BundledClient):
    """A Dask client whose tasks are placed by balsam_dask and recorded in its store.

    Works synchronously and asynchronously (``Client(..., asynchronous=True)``, ``await
    client.resume()``), and from Dask's event loop (libraries that submit from callbacks):
    submitting never waits on the scheduler. Placement limits (node shapes, widest gang) are
    read when the client connects and refreshed in the background; the scheduler plugin checks
    them again, so a task that fits no node fails at once rather than waiting forever."""

    _balsam_info: dict[str, Any] | None = None
    _balsam_info_at: float = -1e9
    _balsam_info_error: BaseException | None = None
    _balsam_refreshing: bool = False

    def _balsam_rpc(self) -> Any:
        if self.scheduler is None:
            raise RuntimeError("the client is not connected to a scheduler")
        return self.scheduler

    async def _start(self, *args: Any, **kwargs: Any) -> Any:
        register_dask_config()
        self._stream_handlers[BUNDLE_RESULTS_OP] = self.bundled_futures.on_results
        out = await super()._start(*args, **kwargs)
        await self._refresh_info()
        return out

    async def _refresh_info(self) -> None:
        """Ask the plugin for its view; a failure is remembered, never cached as info."""
        self._balsam_refreshing = True
        try:
            info = await self._balsam_rpc().balsam_info()
            if not isinstance(info, dict):  # Dask answers an unknown request with None
                raise RuntimeError("the scheduler does not know balsam_info")
        except Exception as e:  # no plugin (yet), or the scheduler went away
            self._balsam_info_error = e
        else:
            self._balsam_info, self._balsam_info_error = dict(info), None
        finally:
            self._balsam_info_at = time.monotonic()
            self._balsam_refreshing = False

    def balsam_info(self, refresh: bool = False) -> dict[str, Any]:
        """The scheduler plugin's view: store URL, node shapes, widest gang. On the event loop
        (an asynchronous client, a callback) the last answer serves and a fresh one is asked
        for in the background; elsewhere a stale answer is refreshed first."""
        stale = refresh or time.monotonic() - self._balsam_info_at > _INFO_TTL
        if stale:
            if self.asynchronous:
                if not self._balsam_refreshing and self.scheduler is not None and self.loop is not None:
                    self._balsam_refreshing = True
                    self.loop.add_callback(self._refresh_info)
            else:
                self.sync(self._refresh_info)
        if self._balsam_info is None:
            raise InvalidSpec(
                "the scheduler has no BalsamPlugin: start it with LocalEnsembleCluster, "
                "or Scheduler(plugins=[balsam_dask.BalsamPlugin(store)])"
            ) from self._balsam_info_error
        return self._balsam_info

    # ------------------------------------------------------------------ specs
    def _spec(
        self, kind: str, *, cores: Any, gpus: Any, walltime: Any, timeout: Any, retries: Any, tags: Any,
        name: Any, priority: Any, isolate: Any, durable: Any, **extra: Any,
    ) -> TaskSpec:  # fmt: skip
        if not isinstance(isolate, bool):
            raise InvalidSpec(f"isolate={isolate!r} is invalid: use isolate=True or isolate=False")
        spec = TaskSpec(
            kind=kind, resources=Resources.serial(cores, gpus, walltime), name=name, tags=tags,  # type: ignore[arg-type]
            priority=priority, timeout=timeout, retries=0 if retries is None else retries, isolate=isolate,
            durable=validate.flag("durable", durable), **extra,
        )  # fmt: skip
        self._check_fits(spec.resources)
        return spec

    def _check_fits(self, r: Resources) -> None:
        shapes = [NodeShape(s["cores"], s["gpus"]) for s in self.balsam_info()["node_shapes"]]
        if not shapes:
            return  # no node known yet (a cluster scaling from zero): nothing to check against
        errors = [r.fit_error(s) for s in shapes]
        if all(errors):
            best = max(shapes, key=lambda s: (s.cores, s.gpus))
            raise InvalidSpec(
                f"cores={r.cores}, gpus={r.gpus} cannot run on any node: the largest node has "
                f"{best.cores} cores and {best.gpus} GPUs ({errors[0]})"
            )

    # ------------------------------------------------------------------ Python functions
    def submit(  # type: ignore[override]
        self, fn: Callable[..., Any], *args: Any, cores: int = 1, gpus: int = 0, walltime: Any = None,
        timeout: Any = None, retries: int | None = None, tags: Mapping[str, Any] | None = None,
        name: str | None = None, priority: int = 0, isolate: bool = False,
        on_error: Callable[[BaseException, int], bool] | None = None, on_timeout: Callable[[int], bool] | None = None,
        durable: bool = True, key: Hashable | None = None, pure: bool = True, fifo_timeout: str = "100 ms",
        **kwargs: Any,
    ) -> distributed.Future:  # fmt: skip
        """Run ``fn(*args, **kwargs)`` as a balsam task; returns a Dask future. With Dask's own
        placement (``workers=``, ``resources=``...) it is a plain Dask task, recorded."""
        if dask_placed(kwargs, cores=cores, gpus=gpus, walltime=walltime, timeout=timeout, tags=tags, name=name,
                        isolate=isolate, on_error=on_error, on_timeout=on_timeout, durable=durable):  # fmt: skip
            return super().submit(fn, *args, key=key, pure=pure, retries=retries, priority=priority,
                                  fifo_timeout=fifo_timeout, **kwargs)  # fmt: skip
        spec = self._spec("python", cores=cores, gpus=gpus, walltime=walltime, timeout=timeout, retries=retries,
                          tags=tags, name=name, priority=priority, isolate=isolate, durable=durable)  # fmt: skip
        handlers = handlers_of(on_error, on_timeout)
        if self.status in ("closing", "closed"):  # Dask's own error says so
            return super().submit(fn, *args, key=key, **kwargs)
        data = check_callable(fn, args, kwargs)
        warn_if_large(data)
        task_fn = pack(fn, data)
        with naming_unpicklable(fn, args, kwargs), dask.annotate(**{SPEC_ANNOTATION: spec}):
            if key is None:
                key = f"{funcname(fn)}-{tokenize(fn, kwargs, spec, *args) if pure else uuid.uuid4().hex}"
            return super().submit(run_python, task_fn, handlers, *args, key=key, pure=False, priority=priority,
                                      fifo_timeout=fifo_timeout, **kwargs)  # fmt: skip

    def map(  # type: ignore[override]
        self, fn: Callable[..., Any], *iterables: Iterable[Any], cores: int = 1, gpus: int = 0,
        walltime: Any = None, timeout: Any = None, retries: int | None = None,
        tags: Mapping[str, Any] | None = None, name: str | None = None, priority: int = 0, isolate: bool = False,
        on_error: Callable[[BaseException, int], bool] | None = None, on_timeout: Callable[[int], bool] | None = None,
        durable: bool = True, key: str | list[Hashable] | None = None, pure: bool = True,
        batch_size: int | None = None, bundled: bool = False, **kwargs: Any,
    ) -> list[Any]:  # fmt: skip
        """``fn`` over the iterables as balsam tasks (one spec for all); with Dask's own placement
        (``workers=``, ``resources=``...) as plain Dask tasks, recorded. ``bundled=True``: the
        tasks travel and run in bundles (many per message, no Dask task each) and each returns a
        :class:`~balsam_dask.client.bundled.BundledFuture` (see docs/ARCHITECTURE.md)."""
        if not isinstance(bundled, bool):
            raise InvalidSpec(f"bundled={bundled!r} is invalid: use bundled=True or bundled=False")
        if bundled and dask_placed(kwargs, cores=cores, gpus=gpus, walltime=walltime, timeout=timeout, tags=tags,
                                   name=name, isolate=isolate, on_error=on_error, on_timeout=on_timeout,
                                   durable=durable):  # fmt: skip
            raise InvalidSpec("bundled=True tasks are placed by balsam_dask: drop workers=/resources=, or bundled=False"
                              )  # fmt: skip
        if dask_placed(kwargs, cores=cores, gpus=gpus, walltime=walltime, timeout=timeout, tags=tags, name=name,
                        isolate=isolate, on_error=on_error, on_timeout=on_timeout, durable=durable):  # fmt: skip
            return super().map(fn, *iterables, key=key, pure=pure, retries=retries, priority=priority,  # type: ignore[arg-type]
                               batch_size=batch_size, **kwargs)  # fmt: skip
        spec = self._spec("python", cores=cores, gpus=gpus, walltime=walltime, timeout=timeout, retries=retries,
                          tags=tags, name=name, priority=priority, isolate=isolate, durable=durable)  # fmt: skip
        handlers = handlers_of(on_error, on_timeout)
        lists = [list(it) for it in iterables]
        data = check_callable(fn, tuple(v[0] for v in lists), kwargs) if lists and all(lists) else pickled(fn)
        warn_if_large(data)
        task_fn = pack(fn, data)
        if bundled:
            return self._map_bundled(spec, task_fn, handlers, lists, kwargs, key, funcname(fn))
        if key is None:
            key = f"{funcname(fn)}-{tokenize(spec)[:8]}"
        with dask.annotate(**{SPEC_ANNOTATION: spec}):
            n = min((len(v) for v in lists), default=0)
            with naming_unpicklable(fn, lists, kwargs, mapped=True):
                return super().map(run_python, [task_fn] * n, [handlers] * n, *lists, key=key, pure=pure,
                                   priority=priority, batch_size=batch_size, **kwargs)  # fmt: skip

    # ------------------------------------------------------------------ executables
    def submit_app(
        self, command: str | Sequence[str], params: Mapping[str, Any] | None = None, *, cores: int = 1,
        gpus: int = 0, env: Mapping[str, str] | None = None, workdir: str | None = None, timeout: Any = None,
        check: bool = True, walltime: Any = None, retries: int | None = None, tags: Mapping[str, Any] | None = None,
        name: str | None = None, priority: int = 0, on_error: Callable[[BaseException, int], bool] | None = None,
        on_timeout: Callable[[int], bool] | None = None, durable: bool = True, key: Hashable | None = None,
        bundled: bool = False,
    ) -> Any:  # fmt: skip
        """Run an unmodified executable; the future's result is an ``AppResult``.

        ``command`` is a template (``"./sim --n {n}"``, every parameter shell-quoted) or an
        argv list. A non-zero exit raises ``AppError`` unless ``check=False``. ``bundled=True``:
        it travels and runs bundled with the client's other bundled tasks (a ``BundledFuture``)."""
        if not isinstance(bundled, bool):
            raise InvalidSpec(f"bundled={bundled!r} is invalid: use bundled=True or bundled=False")
        cmd = command if isinstance(command, str) else tuple(command)
        params_d = dict(params or {})
        if not isinstance(check, bool):
            raise InvalidSpec(f"check={check!r} is invalid: use check=True or check=False")
        spec = self._spec(
            "app", cores=cores, gpus=gpus, walltime=walltime, timeout=timeout, retries=retries, tags=tags,
            name=name, priority=priority, isolate=False, durable=durable, command=cmd,
            params=freeze_pairs("params", params_d), env=freeze_pairs("env", env), workdir=workdir, check=check,
        )  # fmt: skip
        check_template(cmd, params_d)
        if key is None:
            key = f"app-{name or 'task'}-{uuid.uuid4().hex}"
        if bundled:
            return self._submit_app_bundled(spec, str(key), AppCall(cmd, params_d, check),
                                            handlers_of(on_error, on_timeout))  # fmt: skip
        with dask.annotate(**{SPEC_ANNOTATION: spec}):
            return super().submit(run_app, AppCall(cmd, params_d, check), handlers_of(on_error, on_timeout),
                                  key=key, pure=False, priority=priority)  # fmt: skip

    # ------------------------------------------------------------------ MPI
    def submit_mpi(
        self, command_or_fn: str | Sequence[str] | Callable[..., Any], *args: Any, nodes: int = 1,
        ranks_per_node: int = 1, threads_per_rank: int = 1, gpus_per_rank: int = 0, launcher: str | None = None,
        bind: str | None = None,
        env: Mapping[str, str] | None = None, workdir: str | None = None, timeout: Any = None,
        mpi_args: Sequence[str] = (), walltime: Any = None, retries: int | None = None,
        tags: Mapping[str, Any] | None = None, name: str | None = None, priority: int = 0,
        params: Mapping[str, Any] | None = None, check: bool = True,
        on_error: Callable[[BaseException, int], bool] | None = None, on_timeout: Callable[[int], bool] | None = None,
        durable: bool = True, key: Hashable | None = None, **kwargs: Any,
    ) -> distributed.Future:  # fmt: skip
        """An MPI program (a command template or argv list, run unmodified) or a Python
        function ``fn(comm, *args, **kwargs)`` run on every rank (rank 0's value is the
        result) on ``nodes`` nodes of one allocation."""
        from balsam_dask.mpi_tasks.launchers import get_launcher
        from balsam_dask.worker.execute_mpi import MPICall, run_mpi

        if launcher is not None:
            get_launcher(launcher)  # an unknown name fails here, not on the node
        if isinstance(mpi_args, str) or not all(isinstance(a, str) for a in mpi_args):
            raise InvalidSpec(f"mpi_args={mpi_args!r} is invalid: give a list of strings, e.g. mpi_args=['-l']")
        if not isinstance(check, bool):
            raise InvalidSpec(f"check={check!r} is invalid: use check=True or check=False")
        params_d = dict(params or {})
        if callable(command_or_fn):
            reject_dask_placement(kwargs)
            check_callable(command_or_fn, (None, *args), kwargs)
            call, cmd = MPICall(fn=command_or_fn), None
        else:
            if args or kwargs:
                raise InvalidSpec("a command takes params={...}, not extra arguments; pass a function to use *args")
            cmd = command_or_fn if isinstance(command_or_fn, str) else tuple(command_or_fn)
            call = MPICall(command=cmd, params=params_d, check=check)
        resources = Resources(nodes, ranks_per_node, threads_per_rank, gpus_per_rank, walltime)
        spec = TaskSpec(
            kind="mpi", resources=resources, name=name, tags=tags, priority=priority, timeout=timeout,  # type: ignore[arg-type]
            retries=0 if retries is None else retries, durable=validate.flag("durable", durable), command=cmd,
            params=freeze_pairs("params", params_d), env=freeze_pairs("env", env), workdir=workdir,
            launcher=launcher, mpi_args=tuple(mpi_args), check=check, bind=bind,
        )  # fmt: skip
        if cmd is not None:
            check_template(cmd, params_d)
        self._check_fits(resources)
        widest = self.balsam_info().get("max_nodes")
        if widest and nodes > widest:
            raise InvalidSpec(
                f"nodes={nodes} is more than any allocation can have (at most {widest} nodes per allocation); "
                f"use nodes<={widest}"
            )
        if key is None:
            label = name or (funcname(command_or_fn) if callable(command_or_fn) else "mpi")
            key = f"mpi-{label}-{uuid.uuid4().hex}"
        with dask.annotate(**{SPEC_ANNOTATION: spec}):
            with naming_unpicklable(command_or_fn, args, kwargs):
                return super().submit(run_mpi, call, handlers_of(on_error, on_timeout), *args, key=key, pure=False,
                                  priority=priority, **kwargs)  # fmt: skip

    # ------------------------------------------------------------------ control
    def kill(
        self, futures: distributed.Future | Iterable[distributed.Future | Hashable] | None = None, *,
        tags: Mapping[str, Any] | None = None, reason: str = "killed on request",
    ) -> Any:  # fmt: skip
        """Kill tasks (their processes too) and mark them KILLED; returns the killed keys
        (awaitable on an asynchronous client)."""
        if futures is None and not tags:
            raise InvalidSpec("kill() needs futures or tags={...}, e.g. client.kill(tags={'exp': 'sweep'})")
        if isinstance(futures, (distributed.Future, BundledFuture)):
            futures = [futures]
        keys = [f.key if isinstance(f, (distributed.Future, BundledFuture)) else f for f in (futures or [])]
        tag_pairs = dict(freeze_pairs("tags", tags)) if tags else None
        return self.sync(self._kill, keys, tag_pairs, reason)

    async def _kill(self, keys: list[Hashable], tags: dict[str, str] | None, reason: str) -> list[str]:
        return list(await self._balsam_rpc().balsam_kill(keys=keys, tags=tags, reason=reason, client=self.id))

    def flush(self, timeout: float = 60.0) -> Any:
        """Wait until every event so far is written to the store (awaitable when asynchronous)."""
        return self.sync(self._flush, timeout)

    async def _flush(self, timeout: float) -> None:
        if not await self._balsam_rpc().balsam_flush(timeout=timeout):
            raise TimeoutError(f"the store writer did not flush within {timeout}s")

    def balsam_status(self) -> Any:
        """The plugin's placement, writer and error status (awaitable when asynchronous)."""
        return self.sync(self._balsam_status)

    async def _balsam_status(self) -> dict[str, Any]:
        return dict(await self._balsam_rpc().balsam_status())

    def resume(self, limit: int | None = None) -> Any:
        """Submit again the unfinished durable tasks of dead sessions of this store; returns
        their futures by key (awaitable when asynchronous)."""
        return self.sync(self._resume, limit)

    async def _resume(self, limit: int | None) -> dict[Hashable, distributed.Future]:
        from balsam_dask.client.resubmit import resubmit

        plan = await self._balsam_rpc().balsam_resume(limit=limit)
        return resubmit(self, plan)
