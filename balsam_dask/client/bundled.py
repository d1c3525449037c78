"""Bundled tasks on the client: ``client.map(fn, items, bundled=True)``, ``submit_app(..., bundled=True)``.

The tasks go to the scheduler plugin in one stream message (no Dask task each); the plugin
places them and nodes run them in bundles (scheduler/bundles.py, worker/bundles.py). Each
task's future is a :class:`BundledFuture`: a ``concurrent.futures.Future`` (so
``concurrent.futures.wait``/``as_completed`` work, and ``await`` on an asynchronous client)
that resolves when its outcome arrives, with the others of its batch. What they cannot do
that Dask futures can: be passed as arguments to other tasks, or be used with
``distributed.wait``/``as_completed``; their results travel through the scheduler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Generator, Hashable, Sequence
from typing import Any

import cloudpickle
import distributed

from balsam_dask.errors import InvalidSpec
from balsam_dask.protocol import BUNDLE_SUBMIT_OP, BundledCall, BundledOutcome, wire_spec
from balsam_dask.spec import TaskSpec
from balsam_dask.worker.execute import AppCall, run_app, run_python

#: Tasks per submit message (a very large map leaves in several).
SUBMIT_CHUNK = 5000


class BundledFuture(concurrent.futures.Future):
    """The future of one bundled task."""

    def __init__(self, key: str, client: Any, value: bool = True) -> None:
        super().__init__()
        self.key = key
        self.client = client
        self.value = value  # False: its owner does not read the value (None), nothing is unpickled

    @property
    def status(self) -> str:
        """As a Dask future's: pending, finished, error or cancelled."""
        if not self.done():
            return "pending"
        if self.cancelled():
            return "cancelled"
        return "error" if self.exception() is not None else "finished"

    def cancel(self) -> bool:
        """Kill the task (recorded KILLED); False if it already ended."""
        if self.done():
            return False
        self.client.loop.add_callback(self.client.balsam_kill_keys, [self.key], "cancelled")
        return super().cancel()

    def release(self) -> None:
        """Nothing to release (Dask futures hold data on workers; these hold their value)."""

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return f"<BundledFuture: {self.status}, key: {self.key}>"


class BundledFutures:
    """A client's bundled futures by key, resolved by the scheduler's result batches."""

    def __init__(self) -> None:
        self.pending: dict[str, BundledFuture] = {}
        self.early: dict[str, BundledOutcome] = {}  # outcomes that came before their future

    def expect(self, client: Any, keys: Sequence[str], values: bool = True) -> list[BundledFuture]:
        futs = []
        for key in keys:
            fut = BundledFuture(key, client, values)
            outcome = self.early.pop(key, None)
            if outcome is None:
                self.pending[key] = fut
            else:
                resolve(fut, outcome)
            futs.append(fut)
        return futs

    def on_results(self, results: list[BundledOutcome], **_: Any) -> None:
        """The client's stream handler for ``BUNDLE_RESULTS_OP``."""
        for outcome in results:
            fut = self.pending.pop(outcome["key"], None)
            if fut is None:
                self.early[outcome["key"]] = outcome
            elif not fut.done():
                resolve(fut, outcome)


def resolve(fut: BundledFuture, outcome: BundledOutcome) -> None:
    status = outcome.get("status")
    try:
        if status == "ok":
            fut.set_result(cloudpickle.loads(outcome["value"]) if fut.value else None)
        elif status == "error":
            fut.set_exception(cloudpickle.loads(outcome["error"]))
        else:
            concurrent.futures.Future.cancel(fut)
    except Exception as e:  # a value or error that does not unpickle here
        if not fut.done():
            fut.set_exception(e)


def calls_for(spec: TaskSpec, fn_id: str, lists: list[list[Any]], kwargs: dict[str, Any],
              key: str | list[Hashable] | None, prefix: str) -> list[BundledCall]:  # fmt: skip
    """One call per item of the mapped lists (their keys unique: bundled tasks are never
    deduplicated); a future among the arguments is refused."""
    n = min((len(v) for v in lists), default=0)
    if isinstance(key, list):
        if len(key) != n:
            raise InvalidSpec(f"key= has {len(key)} keys for {n} tasks: give one key per task, or key='prefix'")
        keys = [str(k) for k in key]
    else:
        base = key or prefix
        keys = [f"{base}-{uuid.uuid4().hex}" for _ in range(n)]
    for i in range(n):
        for v in (*(lst[i] for lst in lists), *kwargs.values()):
            if isinstance(v, (distributed.Future, BundledFuture)):
                raise InvalidSpec(
                    f"bundled tasks take values, not futures (task {i}'s argument {v!r}): "
                    "gather them first, or map with bundled=False to pass futures"
                )
    wire = wire_spec(spec)
    return [{"key": keys[i], "spec": wire, "priority": spec.priority, "fn": fn_id,
             "args": cloudpickle.dumps((tuple(lst[i] for lst in lists), kwargs))} for i in range(n)]  # fmt: skip


def app_call(spec: TaskSpec, fn_id: str, key: str, app: Any, handlers: Any) -> BundledCall:
    """One ``submit_app(..., bundled=True)``: ``run_app(app, handlers)`` on its node."""
    return {"key": key, "spec": wire_spec(spec), "priority": spec.priority, "fn": fn_id,
            "args": cloudpickle.dumps(((app, handlers), {}))}  # fmt: skip


def submit_messages(batches: list[tuple[list[BundledCall], dict[str, bytes]]]) -> list[dict[str, Any]]:
    """The stream messages carrying ``batches`` of calls, in order, each with the functions its
    calls use (``(callable, *leading arguments)`` pickled, which a node calls with each task's
    arguments after them); at most SUBMIT_CHUNK calls a message."""
    msgs: list[dict[str, Any]] = []
    for calls, fns in batches:
        for i in range(0, len(calls), SUBMIT_CHUNK):
            part = calls[i : i + SUBMIT_CHUNK]
            last = msgs[-1] if msgs else None
            if last is not None and len(last["tasks"]) + len(part) <= SUBMIT_CHUNK:
                last["tasks"].extend(part)
                last["fns"].update(fns)
            else:
                msgs.append({"op": BUNDLE_SUBMIT_OP, "tasks": list(part), "fns": dict(fns)})
    return msgs


def new_fn_id() -> str:
    return uuid.uuid4().hex


class BundledClient(distributed.Client):
    """What ``balsam_dask.Client`` adds to ``distributed.Client`` for bundled tasks."""

    _bundled: BundledFutures | None = None
    _app_fn: tuple[str, bytes] | None = None
    _outgoing: list[tuple[list[BundledCall], dict[str, bytes]]] | None = None  # calls not yet sent
    _outgoing_lock = threading.Lock()  # one for every client: held for an append

    @property
    def bundled_futures(self) -> BundledFutures:
        """This client's bundled futures, resolved from the scheduler's result batches."""
        if self._bundled is None:
            self._bundled = BundledFutures()
        return self._bundled

    def _map_bundled(self, spec: TaskSpec, task_fn: Any, handlers: Any, lists: list[list[Any]], kwargs: dict[str, Any],
                     key: str | list[Hashable] | None, prefix: str) -> list[BundledFuture]:  # fmt: skip
        fn_id = new_fn_id()
        calls = calls_for(spec, fn_id, lists, kwargs, key, prefix)
        futs = self.bundled_futures.expect(self, [c["key"] for c in calls])
        self._send_bundled(calls, {fn_id: cloudpickle.dumps((run_python, task_fn, handlers))})
        return futs

    def _submit_app_bundled(self, spec: TaskSpec, key: str, app: AppCall, handlers: Any) -> BundledFuture:
        if self._app_fn is None:
            self._app_fn = (new_fn_id(), cloudpickle.dumps((run_app,)))
        fn_id, fn_bytes = self._app_fn
        (fut,) = self.bundled_futures.expect(self, [key])
        self._send_bundled([app_call(spec, fn_id, key, app, handlers)], {fn_id: fn_bytes})
        return fut

    def _send_bundled(self, calls: list[BundledCall], fns: dict[str, bytes]) -> None:
        """Queue ``calls`` for the scheduler: what is queued until the event loop's next turn
        leaves together, in order (``submit_app`` in a loop: one message, not one each)."""
        if self.status not in ("running", "closing", "connecting", "newly-created"):
            raise distributed.client.ClosedClientError(f"Client is {self.status}: bundled tasks cannot be sent")
        with self._outgoing_lock:
            first = self._outgoing is None
            if first:
                self._outgoing = []
            assert self._outgoing is not None
            self._outgoing.append((calls, fns))
        if first:
            loop = self.loop
            assert loop is not None  # a running client has its loop
            loop.add_callback(self._flush_bundled)

    def _flush_bundled(self) -> None:
        with self._outgoing_lock:
            batches, self._outgoing = self._outgoing or [], None
        for msg in submit_messages(batches):
            self._send_to_scheduler_safe(msg)

    def expect_bundled(self, keys: Sequence[str], values: bool = True) -> list[BundledFuture]:
        """Futures for bundled tasks submitted for this client by other means (``serve``'s claims);
        ``values=False``: their results are not read (they resolve to None, unpickled nowhere)."""
        return self.bundled_futures.expect(self, keys, values)

    async def balsam_kill_keys(self, keys: list[Hashable], reason: str) -> list[str]:
        """Kill tasks by key (what a BundledFuture's ``cancel`` sends)."""
        rpc: Any = self.scheduler
        return list(await rpc.balsam_kill(keys=keys, tags=None, reason=reason, client=self.id))

    def gather(self, futures: Any, *args: Any, **kwargs: Any) -> Any:
        """Dask's ``gather``; a list that holds bundled futures gives their values in place."""
        if not isinstance(futures, (list, tuple)) or not any(isinstance(f, BundledFuture) for f in futures):
            return super().gather(futures, *args, **kwargs)
        errors = kwargs.get("errors", args[0] if args else "raise")
        if self.asynchronous:
            return self._gather_bundled(list(futures), errors)
        return self.sync(self._gather_bundled, list(futures), errors)

    async def _gather_bundled(self, futures: list[Any], errors: str) -> list[Any]:
        dask_futs = [f for f in futures if isinstance(f, distributed.Future)]
        got = iter(await super().gather(dask_futs, errors=errors, asynchronous=True) if dask_futs else [])
        out = []
        for f in futures:
            if isinstance(f, BundledFuture):
                try:
                    out.append(await f)
                except Exception:
                    if errors != "skip":
                        raise
            elif isinstance(f, distributed.Future):
                out.append(next(got))
            else:
                out.append(f)
        return out
