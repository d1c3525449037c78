"""Batch-system ensemble clusters on dask-jobqueue: one batch job = several node-workers.

dask-jobqueue's ``Job`` submits and cancels one batch job per SpecCluster "worker"; here
one job holds ``nodes`` nodes and starts one node-worker per node (``<job>-<node index>``,
the SpecCluster *group* of the job), so jobs of different sizes coexist in one cluster. The
scheduler runs :class:`~balsam_dask.scheduler.plugin.BalsamPlugin`; each job is an allocation in the
store, from submission (QUEUED, with the batch system's job id) through RUNNING to its end
(FINISHED, CANCELLED, TIMEOUT or FAILED), watched with the batch system's status command.
A failed submission is recorded (SUBMIT_FAILED, with the command's output), logged, and
further submissions back off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import Any, ClassVar

from dask_jobqueue.core import Job
from distributed.deploy.spec import ProcessInterface
from distributed.security import Security
from distributed.utils import get_ip

from balsam_dask.deploy.allocations import AllocationCluster
from balsam_dask.deploy.commands import run_command
from balsam_dask.deploy.jobs import EnsembleJobSpec
from balsam_dask.deploy.systems import BatchSystem
from balsam_dask.errors import AllocationError, InvalidSpec
from balsam_dask.network import check_host, check_security, remove_files, write_worker_tls_files
from balsam_dask.spec import NodeShape, parse_duration
from balsam_dask.store.engine import resolve_url

log = logging.getLogger(__name__)


class BatchJob(Job):
    """One ensemble job. ``system`` is the batch system's module (``slurm``, ``pbs``, ``lsf``)."""

    system: ClassVar[BatchSystem]
    config_name = "balsam-ensemble"

    def __init__(self, scheduler: str | None = None, name: str | None = None, *, job: dict[str, Any],
                 on_event: Any = None, **_: Any) -> None:  # fmt: skip
        ProcessInterface.__init__(self)  # Job.__init__ builds a one-node command we do not use
        assert scheduler is not None and name is not None
        self.name = name
        self.job_id: str | None = None
        self.spec = EnsembleJobSpec(name=name, scheduler=scheduler, **job)
        self.on_event = on_event
        self.submit_error: str | None = None

    def job_script(self) -> str:
        return str(self.system.job_script(self.spec))

    async def start(self) -> None:
        try:
            with self.job_file() as fn:
                self.job_id = await self._submit(fn)
        except AllocationError as e:  # report, never break the cluster's state loop
            self.submit_error = str(e).strip()
            log.error("balsam_dask: submitting %s failed: %s", self.name, self.submit_error)
            if self.on_event:
                self.on_event(self, "SUBMIT_FAILED", self.submit_error)
        else:
            if self.on_event:
                self.on_event(self, "QUEUED", None)
        await ProcessInterface.start(self)

    async def _submit(self, script: str) -> str:
        """Submit the job script; its batch job id."""
        system = self.system
        if system.SUBMIT_READS_STDIN:  # bsub < script: the options are read from the script
            done = await run_command([system.SUBMIT], stdin_file=script)
        else:
            done = await run_command([system.SUBMIT, script])
        problem = done.problem()
        if problem:
            raise AllocationError(problem)
        job_id = system.parse_job_id(done.out)
        if job_id is None:
            raise AllocationError(f"{system.SUBMIT} printed no job id: {(done.out + done.err).strip()[:500]!r}")
        return job_id

    async def close(self) -> None:
        if self.job_id:
            done = await run_command([self.system.CANCEL, self.job_id])
            if done.returncode:  # usually: the job has ended already
                log.debug("balsam_dask: %s", done.problem())
        await ProcessInterface.close(self)


class EnsembleCluster(AllocationCluster):
    """Base of SlurmEnsembleCluster, PBSEnsembleCluster and LSFEnsembleCluster.

    The compute nodes must reach the scheduler, so it cannot keep to loopback: it listens on
    the one address it gives the job scripts, this machine's address on its default route
    (Dask's ``get_ip()``), not on every interface. ``interface="ib0"`` picks a network
    interface for the scheduler and the node-workers (dask-jobqueue's ``interface=``),
    ``host=`` an address for the scheduler (``"0.0.0.0"``: every interface), and
    ``scheduler_options={"host"|"interface": ...}`` overrides both. A node-worker listens on
    its own address on the route to the scheduler, the one it gives the others anyway.
    Anyone who can reach these addresses can connect: ``security=True`` (or a
    :class:`distributed.Security`) makes every connection TLS; certificates held in memory are
    written for the node-workers to ``<workdir>/.balsam_tls`` (files 0600, removed when the
    cluster closes), which the compute nodes must see as they see ``balsam_workdirs``.
    """

    job_cls: ClassVar[type[BatchJob]]

    def __init__(
        self, *, cores_per_node: int, gpus_per_node: int = 0, memory_per_node: str | None = None,
        walltime: Any = "00:30:00", queue: str | None = None, account: str | None = None,
        job_extra_directives: tuple[str, ...] | list[str] = (), job_script_prologue: tuple[str, ...] | list[str] = (),
        python: str | None = None, launcher: str | None = None, bind: str | None = None,
        log_directory: str | None = None,
        store: str | None = None, drain_margin: float | None = 60.0, max_nodes_per_job: int = 64,
        workdir: str | None = None, scheduler_options: dict[str, Any] | None = None, poll_interval: float = 5.0,
        submit_backoff: float = 10.0, asynchronous: bool = False, loop: Any = None,
        silence_logs: int | bool = logging.WARNING, name: str | None = None, host: str | None = None,
        interface: str | None = None, security: Security | bool | None = None,
    ) -> None:  # fmt: skip
        tls = check_security(security)
        host, interface = check_host("host", host), check_host("interface", interface, "'ib0'")
        if host and interface:
            raise InvalidSpec(f"host={host!r} and interface={interface!r}: give one of them, e.g. interface='ib0'")
        listen = dict(scheduler_options or {})
        if "host" not in listen and "interface" not in listen:
            listen.update({"interface": interface} if interface else {"host": host or get_ip()})
        base = os.path.abspath(workdir or os.getcwd())
        default_walltime: float = parse_duration("walltime", walltime) or 1800.0
        self.batch_options: dict[str, Any] = {
            "cores_per_node": cores_per_node, "gpus_per_node": gpus_per_node, "memory_per_node": memory_per_node,
            "queue": queue, "account": account, "job_extra_directives": tuple(job_extra_directives),
            "job_script_prologue": tuple(job_script_prologue), "launcher": launcher, "bind": bind,
            "log_directory": log_directory,
            "drain_margin": drain_margin, "workdir": os.path.join(base, "balsam_workdirs"),
            "results_dir": os.path.join(base, "balsam_results"),
        }  # fmt: skip
        if python:
            self.batch_options["python"] = python
        worker_args = ["--interface", interface] if interface else []
        tls_files: list[str] = []
        if tls is not None:
            tls_args, tls_files = write_worker_tls_files(tls, os.path.join(base, ".balsam_tls"))
            worker_args += tls_args
        self._tls_files = weakref.finalize(self, remove_files, tls_files)  # also if __init__ fails below
        self.batch_options["worker_extra_args"] = tuple(worker_args)
        # bad options fail now, not at the first submission
        EnsembleJobSpec(name="check", scheduler="tcp://x:1", nodes=1, walltime=default_walltime, **self.batch_options)
        self.poll_interval = poll_interval
        self._watch_task: asyncio.Task[None] | None = None
        store_url = resolve_url(store or os.environ.get("BALSAM_DASK_STORE") or os.path.join(base, "balsam.db"))
        super().__init__(
            node_shape=NodeShape(cores_per_node, gpus_per_node), store_url=store_url,
            max_nodes_per_job=max_nodes_per_job, default_walltime=default_walltime,
            scheduler_options={"dashboard": False, **listen}, security=tls,
            submit_backoff=submit_backoff, asynchronous=asynchronous, loop=loop, silence_logs=silence_logs, name=name,
        )  # fmt: skip

    @property
    def system_name(self) -> str:  # type: ignore[override]
        return self.job_cls.system.NAME

    def job_options(self, nodes: int, walltime: float | None) -> dict[str, Any]:
        return {**self.batch_options, "nodes": nodes, "walltime": walltime}

    def allocation_fields(self) -> dict[str, Any]:
        return {"queue": self.batch_options["queue"], "account": self.batch_options["account"]}

    def new_job_name(self) -> str:
        self._counter += 1
        return f"{self.system_name}-{os.getpid()}-{self._counter}"

    def job_script(self, nodes: int = 1, walltime: Any = None) -> str:
        seconds = parse_duration("walltime", walltime) or self.default_walltime or 1800.0
        spec = EnsembleJobSpec(name="example", scheduler=self.scheduler_address, walltime=seconds,
                               **{**self.batch_options, "nodes": nodes})  # fmt: skip
        return str(self.job_cls.system.job_script(spec))

    async def _shrink(self, name: str, workers: list[str], hosts: list[str], keep_hosts: list[str]) -> str | None:
        job_id = self._jobs[name]["job_id"]
        if not job_id:
            return "the job has no batch id"
        done = await run_command(self.job_cls.system.release_command(job_id, hosts, keep_hosts))
        return done.problem()

    # ------------------------------------------------------------------ watching the batch system
    async def _start(self) -> None:
        await super()._start()
        self._watch_task = asyncio.create_task(self._watch())

    async def _close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        await super()._close()
        self._tls_files()  # the jobs are gone: their workers no longer need the certificates

    async def _watch(self) -> None:
        system = self.job_cls.system
        while True:
            await asyncio.sleep(self.poll_interval)
            live = {i["job_id"]: n for n, i in self._jobs.items()
                    if i["job_id"] and i["state"] in ("QUEUED", "RUNNING")}  # fmt: skip
            if not live:
                continue
            done = await run_command(system.status_command(list(live)))
            out, err = done.out, done.err
            if done.returncode and not out.strip() and not any(w in err.lower() for w in ("unknown", "not found")):
                # nothing listed and no "unknown job" complaint: the command itself failed
                log.warning("balsam_dask: %s", done.problem())
                continue
            # (qstat/bjobs exit non-zero when some id is unknown, long gone: unlisted jobs have ended)
            states = system.parse_status(out)
            running = {cfg.alloc_id for cfg in self.plugin.nodes.values()}
            for job_id, name in live.items():
                state = states.get(job_id, "FINISHED")  # no longer listed: it ended
                if state == "QUEUED" and job_id in running:
                    state = "RUNNING"  # its workers are here already
                if state != self._jobs[name]["state"]:
                    self.set_state(name, state, f"{system.STATUS}: {state}")
                if state not in ("QUEUED", "RUNNING"):
                    self.worker_spec.pop(name, None)
