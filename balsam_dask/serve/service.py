"""``balsam-dask serve``: runs the task database of a store on a cluster.

It claims runnable database tasks through the scheduler (``balsam_claim``: leased to the
plugin's session, so ``balsam-dask kill`` reaches them), submits each as ``run_db_task(job)``
under its key, keeps at most ``max_in_flight`` of them submitted, renews its leases by
heartbeat, requeues the tasks of services whose lease expired, and records what the nodes sent
back (transfers, tasks created by hooks). It stops after ``idle_ttl`` seconds with nothing to do
(unless ``persistent``); the first SIGTERM/SIGINT stops claiming and waits for what is in
flight, a second one stops at once (the leases then expire and another service takes over).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import distributed

from balsam_dask import validate
from balsam_dask.client.client import Client
from balsam_dask.errors import BalsamDaskError
from balsam_dask.protocol import SPEC_ANNOTATION
from balsam_dask.scheduler.claims import job_of, spec_of
from balsam_dask.serve.outcomes import record_outcome
from balsam_dask.store.api import Store
from balsam_dask.worker.dbtask import run_db_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """How a service runs: ``lease`` (seconds a claim lasts without heartbeat), ``idle_ttl``
    (seconds with nothing to do before it stops; ``persistent``: never), ``max_in_flight``
    (tasks submitted at once; default: four times the cluster's cores, at least 16; bundled:
    32 times, at least 256), which tasks it takes (``tags`` all match, ``apps``), ``tick``
    (seconds between claims), ``bundled`` (the tasks run in bundles on node executors, no Dask
    task each: the default; False submits one Dask task per database task)."""

    lease: float = 60.0
    idle_ttl: float = 300.0
    persistent: bool = False
    max_in_flight: int | None = None
    tags: dict[str, str] | None = None
    apps: list[str] | None = None
    tick: float = 0.25
    bundled: bool = True

    def __post_init__(self) -> None:
        validate.flag("bundled", self.bundled)
        validate.number("lease", self.lease, "lease=60", above=1.0)
        validate.number("idle_ttl", self.idle_ttl, "idle_ttl=300", 0)
        if self.max_in_flight is not None:
            validate.integer("max_in_flight", self.max_in_flight, "max_in_flight=64", 1)
        validate.number("tick", self.tick, "tick=0.25", above=0)


@dataclass
class ServeReport:
    """What one service did."""

    submitted: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    created: int = 0  # tasks its hooks created
    started_at: float = field(default_factory=time.time)
    ended_at: float = 0.0
    reason: str = ""

    @property
    def ended(self) -> int:
        return self.finished + self.failed + self.cancelled


Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ServePlan:
    """What ``serve`` needs: the store, how to start the cluster, the options."""

    store: Store
    make_cluster: Callable[[], Awaitable[Any]]
    options: ServeOptions


class Service:
    """One ``serve`` run: ``cluster`` is an AllocationCluster started asynchronously (its
    scheduler has the plugin on ``store``'s database); ``progress`` gets a snapshot each second."""

    def __init__(self, store: Store, cluster: Any, options: ServeOptions | None = None, *,
                 progress: Progress | None = None) -> None:  # fmt: skip
        self.store = store
        self.cluster = cluster
        self.options = options or ServeOptions()
        self.progress = progress
        self.report = ServeReport()
        self.client: Client | None = None
        self.in_flight: dict[str, Any] = {}  # key -> its Dask or bundled future
        self._done: asyncio.Queue[Any] = asyncio.Queue()
        self._outcomes: set[str] = set()  # keys whose result carries transfers or new tasks
        self._stopping = 0  # signals received
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Stop claiming and finish what is in flight; called twice, stop now."""
        self._stopping += 1
        self._stop.set()

    async def run(self) -> ServeReport:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
        try:
            async with Client(self.cluster, asynchronous=True) as client:
                self.client = client
                await self._serve(client)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.report.ended_at = time.time()
        return self.report

    async def _serve(self, client: Client) -> None:
        opts = self.options
        limit = opts.max_in_flight or await self._default_in_flight(client)
        last_busy = time.monotonic()
        next_beat = next_progress = 0.0
        rpc: Any = client.scheduler
        while True:
            now = time.monotonic()
            await self._collect()
            if self._stopping >= 2:
                self.report.reason = "stopped by a second signal"
                break
            if self._stopping and not self.in_flight:
                self.report.reason = "stopped by a signal, drained"
                break
            if now >= next_beat:
                await rpc.balsam_renew(lease=opts.lease)
                await asyncio.get_running_loop().run_in_executor(None, self.store.requeue_expired)
                next_beat = now + opts.lease / 3
            got = 0
            # refill at half: fewer, larger claims (each is a write transaction and a graph update)
            if not self._stopping and len(self.in_flight) <= limit // 2:
                items = await rpc.balsam_claim(limit=limit - len(self.in_flight), lease=opts.lease, tags=opts.tags,
                                               apps=opts.apps, owner=client.id if opts.bundled else None)  # fmt: skip
                bundled = [item for item in items if item.get("bundled")]
                if bundled:  # the scheduler runs them already: follow them
                    self._follow(client, bundled)
                if len(bundled) < len(items):  # MPI launches, or not bundled: one Dask task each
                    self._submit(client, [item for item in items if not item.get("bundled")])
                got = len(items)
            if got or self.in_flight:
                last_busy = now
            elif not opts.persistent and not self._stopping and now - last_busy >= opts.idle_ttl:
                self.report.reason = f"idle for {opts.idle_ttl:g} s"
                break
            if self.progress is not None and now >= next_progress:
                self.progress(await self._snapshot(client))
                next_progress = now + 1.0
            if not got or len(self.in_flight) > limit // 2:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake(), opts.tick)
        await self._collect()
        if self.progress is not None:
            self.progress(await self._snapshot(client))

    async def _wake(self) -> None:
        """Returns when a task ends or a signal arrives."""
        stop = asyncio.ensure_future(self._stop.wait())
        done = asyncio.ensure_future(self._peek())
        try:
            await asyncio.wait([stop, done], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            done.cancel()
        self._stop.clear()

    async def _peek(self) -> None:
        fut = await self._done.get()
        self._done.put_nowait(fut)

    async def _default_in_flight(self, client: Client) -> int:
        shapes = client.balsam_info().get("node_shapes") or []
        cores = sum(s["cores"] for s in shapes)
        return max(256, 32 * cores) if self.options.bundled else max(16, 4 * cores)

    # ------------------------------------------------------------------ tasks
    def _done_callback(self) -> Callable[[Any], None]:
        loop = asyncio.get_running_loop()

        def done(f: Any) -> None:
            loop.call_soon_threadsafe(self._done.put_nowait, f)

        return done

    def _follow(self, client: Client, items: list[dict[str, Any]]) -> None:
        """Follow claimed tasks the scheduler runs bundled (their futures, from their outcomes);
        only a task with hooks or transfers has a value to read (what it sent back)."""
        done = self._done_callback()
        keep = [item for item in items if _has_outcome(item["job"])]
        self._outcomes.update(item["key"] for item in keep)
        plain = [item for item in items if not _has_outcome(item["job"])]
        for group, values in ((keep, True), (plain, False)):
            futures = client.expect_bundled([item["key"] for item in group], values=values)
            for item, fut in zip(group, futures, strict=True):
                self.in_flight[item["key"]] = fut
                fut.add_done_callback(done)
        self.report.submitted += len(items)

    def _submit(self, client: Client, items: list[dict[str, Any]]) -> None:
        """Submit claimed tasks: one graph update per spec (a sweep of one app is one)."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            groups.setdefault(json.dumps(item["spec"], sort_keys=True), []).append(item)
        done = self._done_callback()
        for group in groups.values():
            spec = spec_of(group[0])
            jobs = [job_of(item) for item in group]
            keys = [item["key"] for item in group]
            with dask.annotate(**{SPEC_ANNOTATION: spec}):
                futs = distributed.Client.map(client, run_db_task, jobs, key=keys, pure=False,
                                              priority=spec.priority)  # fmt: skip
            for key, job, fut in zip(keys, jobs, futs, strict=True):
                self.in_flight[key] = fut
                if job.hooks or job.stage_in or job.stage_out:
                    self._outcomes.add(key)
                fut.add_done_callback(done)
        self.report.submitted += len(items)

    async def _collect(self) -> None:
        """Record what the ended tasks sent back; forget their futures."""
        loop = asyncio.get_running_loop()
        while not self._done.empty():
            fut = self._done.get_nowait()
            key = str(fut.key)
            if self.in_flight.pop(key, None) is None:
                continue
            value: Any = None
            error: BaseException | None = None
            if fut.status == "cancelled":
                self.report.cancelled += 1
            elif key not in self._outcomes:  # nothing to record beyond what the plugin did: no round trip
                if fut.status == "finished":
                    self.report.finished += 1
                else:
                    self.report.failed += 1
                fut.release()
                continue
            else:
                self._outcomes.discard(key)
                try:
                    value = await fut
                except asyncio.CancelledError:
                    self.report.cancelled += 1
                    continue
                except Exception as e:  # the task's own error: the plugin recorded it
                    error = e
                    self.report.failed += 1
                else:
                    self.report.finished += 1
            fut.release()
            try:
                created = await loop.run_in_executor(None, record_outcome, self.store, str(fut.key), value, error)
            except BalsamDaskError as e:  # e.g. a hook's child rows were invalid: said, and the service goes on
                log.error("balsam-dask serve: task %s: %s", fut.key, e)
                continue
            self.report.created += created

    async def _snapshot(self, client: Client) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        counts = await loop.run_in_executor(None, self.store.summary)
        try:
            rpc: Any = client.scheduler
            status = await rpc.balsam_status()
            nodes = status.get("nodes", {})
        except Exception:  # the scheduler is closing
            nodes = {}
        busy = sum(1 for n in nodes.values() if n.get("running") or n.get("free_cores", 0) < n.get("cores", 0))
        return {"states": counts, "in_flight": len(self.in_flight), "nodes": len(nodes), "busy_nodes": busy,
                "report": self.report, "stopping": self._stopping}  # fmt: skip


def _has_outcome(job: dict[str, Any]) -> bool:
    """Whether a database task's result carries what the service records (transfers, new tasks)."""
    return bool(job.get("hooks") or job.get("stage_in") or job.get("stage_out"))


async def serve(store: Store, make_cluster: Callable[[], Awaitable[Any]], options: ServeOptions | None = None,
                *, progress: Progress | None = None, service: list[Service] | None = None) -> ServeReport:  # fmt: skip
    """Start the cluster ``make_cluster()`` gives, serve the store on it, close it."""
    cluster = await make_cluster()
    try:
        svc = Service(store, cluster, options, progress=progress)
        if service is not None:
            service.append(svc)
        return await svc.run()
    finally:
        await cluster.close()
