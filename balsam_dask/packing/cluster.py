"""Batch-system ensemble clusters on dask-jobqueue: one batch job = several node-workers.

dask-jobqueue's ``Job`` submits and cancels one batch job per SpecCluster "worker"; here
one job holds ``nodes`` nodes and starts one node-worker per node (``<job>-<node index>``,
the SpecCluster *group* of the job), so jobs of different sizes coexist in one cluster. The
scheduler runs :class:`~balsam_dask.plugin.BalsamPlugin`; each job is an allocation in the
store, from submission (QUEUED, with the batch system's job id) through RUNNING to its end
(FINISHED, CANCELLED, TIMEOUT or FAILED), watched with the batch system's status command.
A failed submission is recorded (SUBMIT_FAILED, with the command's output), logged, and
further submissions back off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import types
from typing import Any, ClassVar

from dask_jobqueue.core import Job
from distributed import Scheduler, SpecCluster
from distributed.deploy.spec import ProcessInterface

from balsam_dask.errors import AllocationError, InvalidSpec
from balsam_dask.packing.jobs import EnsembleJobSpec
from balsam_dask.plugin import BalsamPlugin
from balsam_dask.spec import NodeShape, parse_duration
from balsam_dask.store.engine import resolve_url

log = logging.getLogger(__name__)


class BatchJob(Job):
    """One ensemble job. ``system`` is the batch system's module (``slurm``, ``pbs``, ``lsf``)."""

    system: ClassVar[types.ModuleType]
    config_name = "balsam-ensemble"

    def __init__(self, scheduler: str | None = None, name: str | None = None, *, job: dict[str, Any],
                 on_event: Any = None, **_: Any) -> None:  # fmt: skip
        ProcessInterface.__init__(self)  # Job.__init__ builds a one-node command we do not use
        assert scheduler is not None and name is not None
        self.name = name
        self.job_id: str | None = None
        self.spec = EnsembleJobSpec(name=name, scheduler=scheduler, **job)
        self.submit_command = self.system.SUBMIT
        self.cancel_command = self.system.CANCEL
        self.job_id_regexp = self.system.JOB_ID_REGEXP
        self.on_event = on_event
        self.submit_error: str | None = None

    def job_script(self) -> str:
        return str(self.system.job_script(self.spec))

    async def start(self) -> None:
        try:
            with self.job_file() as fn:
                out = await self._submit_job(fn)
            self.job_id = self._job_id_from_submit_output(out)
        except Exception as e:  # report, never break the cluster's state loop
            self.submit_error = str(e).strip()
            log.error("balsam_dask: submitting %s failed: %s", self.name, self.submit_error)
            if self.on_event:
                self.on_event(self, "SUBMIT_FAILED", self.submit_error)
        else:
            if self.on_event:
                self.on_event(self, "QUEUED", None)
        await ProcessInterface.start(self)

    async def close(self) -> None:
        if self.job_id:
            await self._close_job(self.job_id, self.cancel_command)
        await ProcessInterface.close(self)


class EnsembleCluster(SpecCluster):
    """Base of SlurmEnsembleCluster, PBSEnsembleCluster and LSFEnsembleCluster."""

    job_cls: ClassVar[type[BatchJob]]

    def __init__(
        self, *, cores_per_node: int, gpus_per_node: int = 0, memory_per_node: str | None = None,
        walltime: Any = "00:30:00", queue: str | None = None, account: str | None = None,
        job_extra_directives: tuple[str, ...] | list[str] = (), job_script_prologue: tuple[str, ...] | list[str] = (),
        python: str | None = None, launcher: str | None = None, log_directory: str | None = None,
        store: str | None = None, drain_margin: float = 60.0, max_nodes_per_job: int = 64,
        workdir: str | None = None, scheduler_options: dict[str, Any] | None = None, poll_interval: float = 5.0,
        submit_backoff: float = 10.0, asynchronous: bool = False, loop: Any = None,
        silence_logs: int | bool = logging.WARNING, name: str | None = None,
    ) -> None:  # fmt: skip
        self.node_shape = NodeShape(cores_per_node, gpus_per_node)
        base = os.path.abspath(workdir or os.getcwd())
        self.store_url = resolve_url(store or os.environ.get("BALSAM_DASK_STORE") or os.path.join(base, "balsam.db"))
        self.default_walltime: float = parse_duration("walltime", walltime) or 1800.0
        if isinstance(max_nodes_per_job, bool) or not isinstance(max_nodes_per_job, int) or max_nodes_per_job < 1:
            raise InvalidSpec(f"max_nodes_per_job={max_nodes_per_job!r} is invalid: use an integer >= 1")
        self.max_nodes_per_job = max_nodes_per_job
        self.job_options: dict[str, Any] = {
            "cores_per_node": cores_per_node, "gpus_per_node": gpus_per_node, "memory_per_node": memory_per_node,
            "queue": queue, "account": account, "job_extra_directives": tuple(job_extra_directives),
            "job_script_prologue": tuple(job_script_prologue), "launcher": launcher, "log_directory": log_directory,
            "drain_margin": drain_margin, "workdir": os.path.join(base, "balsam_workdirs"),
            "results_dir": os.path.join(base, "balsam_results"),
        }  # fmt: skip
        if python:
            self.job_options["python"] = python
        EnsembleJobSpec(name="check", scheduler="tcp://x:1", nodes=1, walltime=self.default_walltime,
                        **self.job_options)  # fmt: skip  # bad options fail now, not at the first submission
        self.plugin = BalsamPlugin(
            self.store_url.render_as_string(hide_password=False),
            node_shapes=[{"cores": cores_per_node, "gpus": gpus_per_node}], max_nodes_per_allocation=max_nodes_per_job,
        )  # fmt: skip
        options = {"plugins": [self.plugin], "dashboard_address": None, "host": "0.0.0.0", **(scheduler_options or {})}
        self.poll_interval = poll_interval
        self.submit_backoff = submit_backoff
        self._backoff_until = 0.0
        self._failures = 0
        self._counter = 0
        self._jobs: dict[str, dict[str, Any]] = {}  # job name -> {alloc, job_id, nodes, walltime, state}
        self._watch_task: asyncio.Task[None] | None = None
        super().__init__(
            workers={}, scheduler={"cls": Scheduler, "options": options}, asynchronous=asynchronous, loop=loop,
            silence_logs=silence_logs, name=name or type(self).__name__,
        )  # fmt: skip

    # ------------------------------------------------------------------ jobs
    def job_script(self, nodes: int = 1, walltime: Any = None) -> str:
        seconds = parse_duration("walltime", walltime) or self.default_walltime
        spec = EnsembleJobSpec(name="example", scheduler=self.scheduler_address, nodes=nodes, walltime=seconds,
                               **self.job_options)  # fmt: skip
        return str(self.job_cls.system.job_script(spec))

    def request(self, nodes: int, walltime: Any = None) -> str:
        """Submit one ensemble job of ``nodes`` nodes; returns its name (its workers are
        ``<name>-0`` ... ``<name>-<nodes-1>``)."""
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise InvalidSpec(f"nodes={nodes!r} is invalid: use an integer >= 1, e.g. nodes=2")
        if nodes > self.max_nodes_per_job:
            raise InvalidSpec(f"nodes={nodes} is more than max_nodes_per_job={self.max_nodes_per_job}")
        seconds = parse_duration("walltime", walltime) or self.default_walltime
        if time.time() < self._backoff_until:
            raise AllocationError(
                f"submissions are backing off for {self._backoff_until - time.time():.0f}s after "
                f"{self._failures} failed submission(s); see the allocations in the store"
            )
        self._counter += 1
        name = f"{self.job_cls.system.__name__.rsplit('.', 1)[-1]}-{os.getpid()}-{self._counter}"
        self._jobs[name] = {"nodes": nodes, "walltime": seconds, "state": "PENDING", "job_id": None,
                            "alloc": self.plugin.new_allocation(system=self.job_cls.system.__name__.rsplit(".", 1)[-1],
                                                                nodes=nodes, walltime=seconds,
                                                                queue=self.job_options["queue"],
                                                                account=self.job_options["account"])}  # fmt: skip
        self.worker_spec[name] = {
            "cls": self.job_cls,
            "options": {"job": {**self.job_options, "nodes": nodes, "walltime": seconds}, "on_event": self._on_job},
            "group": [f"-{i}" for i in range(nodes)],
        }
        self.sync(self._correct_state)
        return name

    def cancel(self, name: str) -> None:
        """Cancel a job (its running tasks are recorded RUN_TIMEOUT and placed again)."""
        if name not in self.worker_spec:
            raise InvalidSpec(f"no job named {name!r}; jobs are: {', '.join(self.worker_spec) or 'none'}")
        self._set_state(name, "CANCELLED", "cancelled by the cluster")
        del self.worker_spec[name]
        self.sync(self._correct_state)

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._jobs.items()}

    def _on_job(self, job: BatchJob, state: str, message: str | None) -> None:
        info = self._jobs.get(job.name)
        if info is None:
            return
        info["job_id"] = job.job_id
        if state == "SUBMIT_FAILED":
            self._failures += 1
            self._backoff_until = time.time() + self.submit_backoff * 2 ** min(self._failures - 1, 6)
            self.worker_spec.pop(job.name, None)
        else:
            self._failures = 0
        self._set_state(job.name, state, message, scheduler_id=job.job_id)

    def _set_state(self, name: str, state: str, message: str | None, **fields: Any) -> None:
        info = self._jobs[name]
        if info["state"] == state and not fields:
            return
        info["state"] = state
        now = time.time()
        times = {"RUNNING": "started_at"}.get(state)
        updates: dict[str, Any] = {"state": state, "message": message, **fields}
        if times:
            updates[times] = now
        if state in ("FINISHED", "CANCELLED", "TIMEOUT", "FAILED", "SUBMIT_FAILED"):
            updates["ended_at"] = now
        self.plugin.update_allocation(info["alloc"], **updates)

    # ------------------------------------------------------------------ watching
    async def _start(self) -> None:
        await super()._start()
        self._watch_task = asyncio.create_task(self._watch())

    async def _close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        for name, info in self._jobs.items():
            if info["state"] in ("QUEUED", "RUNNING"):
                self._set_state(name, "CANCELLED", "cluster closed")
        await super()._close()

    async def _watch(self) -> None:
        system = self.job_cls.system
        while True:
            await asyncio.sleep(self.poll_interval)
            live = {
                i["job_id"]: n for n, i in self._jobs.items() if i["job_id"] and i["state"] in ("QUEUED", "RUNNING")
            }
            if not live:
                continue
            try:
                out = await BatchJob._call(system.status_command(list(live)))
            except Exception as e:  # the status command failing is logged, not fatal
                log.warning("balsam_dask: %s failed: %s", system.STATUS, e)
                continue
            states = system.parse_status(out)
            running = {cfg.alloc_id for cfg in self.plugin.nodes.values()}
            for job_id, name in live.items():
                state = states.get(job_id, "FINISHED")  # no longer listed: it ended
                if state == "QUEUED" and job_id in running:
                    state = "RUNNING"  # its workers are here already
                if state != self._jobs[name]["state"]:
                    self._set_state(name, state, f"{system.STATUS}: {state}")
                if state not in ("QUEUED", "RUNNING"):
                    self.worker_spec.pop(name, None)
