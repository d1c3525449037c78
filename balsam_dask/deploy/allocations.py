"""What every ensemble cluster shares: allocations (jobs of several node-workers) on a
SpecCluster, their records in the store, and scaling by the packing policy.

A job is one SpecCluster worker entry whose *group* is its nodes (``<job>-0`` ...), so jobs
of different sizes coexist and leave together. Subclasses give the job class: a batch job
(``packing/cluster.py``) or local node processes (``balsam_dask/cluster.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from distributed import Scheduler, SpecCluster
from distributed.security import Security

from balsam_dask import validate
from balsam_dask.errors import AllocationError, InvalidSpec, StoreUnavailable
from balsam_dask.network import protocol
from balsam_dask.scheduler.plugin import BalsamPlugin
from balsam_dask.spec import NodeShape, parse_duration
from balsam_dask.store.states import ALLOCATION_ENDED, ALLOCATION_LIVE

if TYPE_CHECKING:
    from balsam_dask.packing.policy import BacklogShape

log = logging.getLogger(__name__)


class AllocationCluster(SpecCluster):
    job_cls: ClassVar[type]
    system_name: ClassVar[str] = "local"

    def __init__(
        self, *, node_shape: NodeShape, store_url: Any, max_nodes_per_job: int, default_walltime: float | None,
        scheduler_options: dict[str, Any], plugin_options: dict[str, Any] | None = None,
        submit_backoff: float = 10.0, asynchronous: bool = False, loop: Any = None,
        silence_logs: int | bool = logging.WARNING, name: str | None = None, security: Security | None = None,
    ) -> None:  # fmt: skip
        validate.integer("max_nodes_per_job", max_nodes_per_job, "max_nodes_per_job=8", 1)
        self.node_shape = node_shape
        self.store_url = store_url
        self.max_nodes_per_job = max_nodes_per_job
        self.default_walltime = default_walltime
        self.plugin = BalsamPlugin(
            store_url.render_as_string(hide_password=False),
            node_shapes=[{"cores": node_shape.cores, "gpus": node_shape.gpus}],
            max_nodes_per_allocation=max_nodes_per_job, **(plugin_options or {}),
        )  # fmt: skip
        self.submit_backoff = submit_backoff
        self._backoff_until = 0.0
        self._failures = 0
        self._counter = 0
        self._jobs: dict[str, dict[str, Any]] = {}
        # security: the scheduler's TLS, and the cluster's (clients made on it, ``Client(cluster)``)
        options = {"plugins": [self.plugin], "security": security, "protocol": protocol(security), **scheduler_options}
        super().__init__(
            workers={}, scheduler={"cls": Scheduler, "options": options}, security=security,
            asynchronous=asynchronous, loop=loop, silence_logs=silence_logs, name=name or type(self).__name__,
        )  # fmt: skip

    # ------------------------------------------------------------------ requests
    def job_options(self, nodes: int, walltime: float | None) -> dict[str, Any]:
        raise NotImplementedError

    def new_job_name(self) -> str:
        self._counter += 1
        return f"{self.system_name}-{self._counter}"

    def request(self, nodes: int, walltime: Any = None) -> str:
        """Start one allocation of ``nodes`` nodes; returns its name (its workers are
        ``<name>-0`` ... ``<name>-<nodes-1>``)."""
        return str(self.sync(self.request_async, nodes, walltime))

    async def request_async(self, nodes: int, walltime: Any = None) -> str:
        validate.integer("nodes", nodes, "nodes=2", 1)
        if nodes > self.max_nodes_per_job:
            raise InvalidSpec(f"nodes={nodes} is more than max_nodes_per_job={self.max_nodes_per_job}")
        seconds = parse_duration("walltime", walltime) or self.default_walltime
        if time.time() < self._backoff_until:
            raise AllocationError(
                f"submissions are backing off for {self._backoff_until - time.time():.0f}s after "
                f"{self._failures} failed submission(s); see `balsam-dask allocations --state SUBMIT_FAILED`"
            )
        name = self.new_job_name()
        alloc = self.plugin.new_allocation(system=self.system_name, nodes=nodes, walltime=seconds or 0.0,
                                           info=self.shape_info(), **self.allocation_fields())  # fmt: skip
        self._jobs[name] = {"nodes": nodes, "walltime": seconds, "state": "PENDING", "job_id": None, "alloc": alloc,
                            "submitted_at": time.time(), "started_at": None}  # fmt: skip
        self.worker_spec[name] = {
            "cls": self.job_cls,
            "options": {"job": self.job_options(nodes, seconds), "on_event": self._on_job},
            "group": [f"-{i}" for i in range(nodes)],
        }
        await self._correct_state()
        return name

    def allocation_fields(self) -> dict[str, Any]:
        return {}

    def shape_info(self) -> dict[str, Any]:
        """What each node of its allocations declares (the allocation record's ``info``): with
        the nodes held over time, what reports measure utilization against."""
        return {"cores_per_node": self.node_shape.cores, "gpus_per_node": self.node_shape.gpus}

    def cancel(self, name: str) -> None:
        """End an allocation (its running tasks are recorded RUN_TIMEOUT and placed again)."""
        self.sync(self.cancel_async, name)

    async def cancel_async(self, name: str) -> None:
        if name not in self.worker_spec:
            raise InvalidSpec(f"no allocation named {name!r}; live ones are: {', '.join(self.worker_spec) or 'none'}")
        self.set_state(name, "CANCELLED", "cancelled by the cluster")
        del self.worker_spec[name]
        await self._correct_state()

    def release_nodes(self, name: str, workers: Sequence[str]) -> list[str]:
        """Give idle nodes of a running allocation back to the batch system while its other
        nodes go on (see :meth:`_release_nodes`); returns the worker names released."""
        return list(self.sync(self.release_nodes_async, name, workers))

    async def release_nodes_async(self, name: str, workers: Sequence[str]) -> list[str]:
        """Release the named node-workers (``<job>-<index>``) of allocation ``name``.

        Only nodes that are idle now (:meth:`releasable_nodes`) go, and never every node (that
        is :meth:`cancel`): each is drained in the placer (nothing more is placed there in the
        meantime), retired from the scheduler, then the batch system is asked to shrink the job
        (:meth:`_shrink`). Recorded in the store: the allocation's message and ``info.released``.
        """
        info = self._jobs.get(name)
        if info is None or name not in self.worker_spec or info["state"] != "RUNNING":
            running = [k for k, v in self._jobs.items() if v["state"] == "RUNNING" and k in self.worker_spec]
            raise InvalidSpec(f"no running allocation named {name!r}; running ones are: {', '.join(running) or 'none'}")
        if isinstance(workers, str) or any(not isinstance(w, str) or w.rpartition("-")[0] != name for w in workers):
            raise InvalidSpec(f"workers={workers!r} is invalid: give node-worker names of {name!r}, e.g. ['{name}-1']")
        now = time.time()
        idle = set(self.releasable_nodes().get(name, ()))
        chosen = [w for w in dict.fromkeys(workers) if w in idle][: max(0, info["nodes"] - 1)]
        if not chosen:
            return []
        addr_of = {str(ws.name): addr for addr, ws in self.scheduler.workers.items()}  # type: ignore[union-attr]
        addrs = [addr_of[w] for w in chosen]
        hosts = [self.plugin.nodes[a].host or w for a, w in zip(addrs, chosen, strict=True)]
        kept = sorted(str(ws.name) for ws in self.scheduler.workers.values()  # type: ignore[union-attr]
                      if str(ws.name).rpartition("-")[0] == name and str(ws.name) not in chosen)  # fmt: skip
        keep_hosts = [self.plugin.nodes[addr_of[w]].host or w for w in kept if addr_of[w] in self.plugin.nodes]
        for addr in addrs:
            self.plugin.placer.set_draining(addr, True)
        retired = await self.scheduler.retire_workers(  # type: ignore[union-attr]
            workers=addrs, close_workers=True, remove=True, stimulus_id=f"balsam-release-{time.time()}"
        )
        # a worker whose data Dask could not move elsewhere stays (retire_workers leaves it out;
        # it reports itself running again, and the plugin then takes it out of draining)
        gone = [i for i, a in enumerate(addrs) if a in retired]
        if len(gone) < len(addrs):
            keep_hosts += [hosts[i] for i in range(len(addrs)) if i not in gone]
            chosen, hosts = [chosen[i] for i in gone], [hosts[i] for i in gone]
            if not chosen:
                return []
        error = await self._shrink(name, chosen, hosts, keep_hosts)
        info["nodes"] -= len(chosen)
        released = [{"worker": w, "host": h, "at": now} for w, h in zip(chosen, hosts, strict=True)]
        info.setdefault("released", []).extend(released)
        message = f"released {len(chosen)} idle node(s) ({', '.join(hosts)}); {info['nodes']} left"
        if error:
            message += f"; the batch system refused to shrink the job: {error}"
            log.warning("balsam_dask: %s: %s", name, message)
        self.plugin.update_allocation(info["alloc"], message=message,
                                      info={**self.shape_info(), "released": list(info["released"])})  # fmt: skip
        return chosen

    async def _shrink(self, name: str, workers: list[str], hosts: list[str], keep_hosts: list[str]) -> str | None:
        """Tell the batch system the job no longer needs ``hosts`` (their workers are gone);
        returns its complaint, if any. Local allocations have nothing to tell."""
        return None

    def releasable_nodes(self) -> dict[str, list[str]]:
        """``{allocation name: [worker names]}``: nodes that could be given back alone. Idle as
        in :meth:`node_usage`, not kept for a gang or a starving task, and not a job's first
        node (``<job>-0``: it runs the job script, and batch systems keep it to the end)."""
        out: dict[str, list[str]] = {}
        for job, index, addr, ws, free in self._job_workers():
            ok = free and index != "0" and ws.status.name == "running" and addr in self.plugin.placed
            if ok and self.plugin.placer.releasable(addr):
                out.setdefault(job, []).append(str(ws.name))
        return out

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._jobs.items()}

    def scale(self, n: int = 0, **kwargs: Any) -> None:  # type: ignore[override]
        """``n`` nodes in all: one new allocation for the missing nodes, or drop the newest
        allocations while more than ``n`` nodes are live (SpecCluster's ``_correct_state``
        then closes them; ``close()`` calls ``scale(0)``)."""
        live = {k: v for k, v in self._jobs.items() if k in self.worker_spec}
        have = sum(v["nodes"] for v in live.values())
        if n > have:
            self.request(min(n - have, self.max_nodes_per_job))
            return
        for name in sorted(live, key=lambda k: -live[k]["submitted_at"]):
            if have <= n:
                break
            self.set_state(name, "CANCELLED", "scaled down")
            del self.worker_spec[name]
            have -= live[name]["nodes"]

    # ------------------------------------------------------------------ events
    def _on_job(self, job: Any, state: str, message: str | None) -> None:
        info = self._jobs.get(job.name)
        if info is None:
            return
        info["job_id"] = getattr(job, "job_id", None)
        if state == "SUBMIT_FAILED":
            self._failures += 1
            self._backoff_until = time.time() + self.submit_backoff * 2 ** min(self._failures - 1, 6)
            self.worker_spec.pop(job.name, None)
        elif state in ("QUEUED", "RUNNING"):
            self._failures = 0
        self.set_state(job.name, state, message, scheduler_id=info["job_id"])

    def set_state(self, name: str, state: str, message: str | None, **fields: Any) -> None:
        info = self._jobs[name]
        if info["state"] == state and not any(fields.values()):
            return
        if info["state"] in ALLOCATION_ENDED:
            return  # an ended allocation stays ended
        info["state"] = state
        now = time.time()
        updates: dict[str, Any] = {"state": state, "message": message, **{k: v for k, v in fields.items() if v}}
        if state == "RUNNING" and info["started_at"] is None:
            info["started_at"] = updates["started_at"] = now
        if state in ALLOCATION_ENDED:
            updates["ended_at"] = now
        self.plugin.update_allocation(info["alloc"], **updates)

    async def _close(self) -> None:
        for name, info in self._jobs.items():
            if info["state"] in ALLOCATION_LIVE:
                self.set_state(name, "CANCELLED" if info["state"] != "RUNNING" else "FINISHED", "cluster closed")
        await super()._close()
        if self.plugin.close_error:  # records that never reached the store: not a clean close
            error, self.plugin.close_error = self.plugin.close_error, None
            raise StoreUnavailable(error)

    # ------------------------------------------------------------------ policy
    def adapt(  # type: ignore[override]
        self, *, min_nodes: int = 1, max_nodes_per_job: int | None = None, max_walltime: Any = "06:00:00",
        min_walltime: Any = "00:10:00", max_queued_jobs: int = 8, max_total_nodes: int = 64,
        queued_timeout: Any = "04:00:00", idle_timeout: Any = 60, default_task_walltime: Any = "01:00:00",
        interval: Any = "2s", extra_backlog: Callable[[], list[BacklogShape]] | None = None, **kwargs: Any,
    ) -> Any:  # fmt: skip
        """Scale with the packing policy (see ``packing/policy.py``) instead of Dask's Adaptive;
        ``extra_backlog()``: shapes of work the scheduler has not seen yet, sized for too."""
        from balsam_dask.deploy.adaptive import PolicyAdaptive
        from balsam_dask.packing.policy import SiteLimits

        limits = SiteLimits(
            min_nodes=min_nodes, max_nodes_per_job=max_nodes_per_job or self.max_nodes_per_job,
            max_walltime=parse_duration("max_walltime", max_walltime) or 0.0,
            min_walltime=parse_duration("min_walltime", min_walltime) or 0.0, max_queued_jobs=max_queued_jobs,
            max_total_nodes=max_total_nodes, node=self.node_shape,
            queued_timeout=parse_duration("queued_timeout", queued_timeout) or 0.0,
            idle_timeout=float(idle_timeout), default_task_walltime=parse_duration("default_task_walltime",
                                                                                   default_task_walltime) or 3600.0,
        )  # fmt: skip
        previous = getattr(self, "_adaptive", None)
        if previous is not None:
            previous.stop()
        self._adaptive = PolicyAdaptive(self, limits=limits, interval=interval, extra_backlog=extra_backlog, **kwargs)
        return self._adaptive

    def node_usage(self) -> dict[str, tuple[int, int]]:
        """``{allocation name: (registered nodes, idle nodes)}``. A node is idle when it runs
        nothing, is reserved for no gang and holds no result a client still wants (closing
        it would make Dask recompute that result)."""
        out: dict[str, list[int]] = {}
        for job, _, addr, _ws, free in self._job_workers():
            reg, idle = out.setdefault(job, [0, 0])
            busy = not free
            if addr in self.plugin.placed:
                st = self.plugin.placer.node(addr)
                busy = busy or bool(st.running) or st.reserved_by is not None
            out[job] = [reg + 1, idle + (0 if busy else 1)]
        return {k: (v[0], v[1]) for k, v in out.items()}

    def _job_workers(self) -> Iterator[tuple[str, str, str, Any, bool]]:
        """(allocation name, node index, address, WorkerState, free) of each node-worker of our
        allocations; free: nothing processing and no result a client still wants (closing the
        worker would make Dask recompute that result)."""
        s = self.scheduler
        for addr, ws in s.workers.items() if s is not None else ():
            job, _, index = str(ws.name).rpartition("-")
            if job in self._jobs:
                yield job, index, addr, ws, not ws.processing and not any(ts.who_wants for ts in ws.has_what)
