"""The search loop of benchmarks/hpo.py and the three ways it runs trials: futures
(``balsam_dask.Client``), serve (database tasks and ``balsam-dask serve``), bare Dask. Each mode
starts its cluster, warms up every worker (scikit-learn imported, the data loaded), runs the
search and returns its figures; ours count what ran from the store."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hpo_search import Asha, rungs, sample_configs, utilization
from serve_throughput import environ

from benchmarks.hpo_trial import warm_up

MODES = ("futures", "serve", "dask")
FUNCTION = "benchmarks.hpo_trial:train"
WARM_UP = "benchmarks.hpo_trial:warm_up"
#: Seconds a trial may run with ``--isolate`` (a database task's timeout runs its function in its own process).
TRIAL_TIMEOUT = 3600.0
TICK = 0.1
ENDED = ("FINISHED", "FAILED", "KILLED")


class Search:
    """The search loop: asks ASHA what to start, reads the trials' reports, kills what stops.
    ``backend`` submits jobs (``submit``), kills one (``kill``), says which ended (``ended``) and
    whether a kill stops the trial itself (``isolate``: it runs in a process of its own)."""

    def __init__(self, args: argparse.Namespace, run_dir: Path, backend: Any, total_cores: int,
                 own_limits: bool) -> None:  # fmt: skip
        self.args, self.dir, self.backend, self.own_limits = args, run_dir, backend, own_limits
        self.rungs = rungs(args.min_epochs, args.max_epochs, args.eta)
        self.asha = Asha(args.trials, len(self.rungs), args.eta)
        self.configs = sample_configs(args.seed, args.trials, min(4, args.cores_per_node))
        self.limit = args.in_flight or total_cores
        self.jobs: dict[int, dict[str, Any]] = {}
        self.active: dict[int, int] = {}  # job -> its log's offset
        self.stopping: set[int] = set()
        self.stop_at: dict[int, float] = {}  # job -> when the search decided to stop it
        self.checkpoints: dict[tuple[int, int], str] = {}  # (config, rung) -> file
        self.reports: list[tuple[float, int, int, float]] = []  # (time, config, rung, accuracy)
        self.t0 = self.t_end = 0.0

    def run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        lingering: set[int] = set()  # stopped, ended for the system, its thread still running
        while True:
            ended = set(self.backend.ended())
            for jid in ended & self.stopping:  # killed: a trial in a worker's thread, which no kill stops, returns
                (self.dir / f"job-{jid}.stop").touch()
            ended |= lingering
            for jid in list(self.active):
                self.read(jid)
            lingering = {j for j in ended if j in self.stopping and not self.backend.isolate and not self.stopped(j)}
            for jid in ended - lingering:
                self.active.pop(jid, None)
                self.asha.ended(self.jobs[jid]["config"]["id"])
            self.start()
            if not self.active and self.asha.done:
                break
            time.sleep(TICK)
        self.t_end = time.time()

    def stopped(self, jid: int) -> bool:
        """The job's trial has returned: its log ends with its ``end`` line, or it never started."""
        try:
            lines = (self.dir / f"job-{jid}.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return True
        return bool(lines) and json.loads(lines[-1])["event"] == "end"

    def start(self) -> None:
        new = []
        while len(self.active) < self.limit and (nxt := self.asha.next_start()) is not None:
            config, rung = nxt
            jid = len(self.jobs)
            cfg = self.configs[config]
            self.jobs[jid] = job = {
                "dir": str(self.dir), "job": jid, "config": asdict(cfg), "start": rung, "rungs": self.rungs,
                "resume": self.checkpoints.get((config, rung - 1)), "seed": self.args.seed + config, "cores": cfg.cores,
                "own_limits": self.own_limits,
            }  # fmt: skip
            self.active[jid] = 0
            new.append(job)
        if new:
            self.backend.submit(new)

    def read(self, jid: int) -> None:
        """Take the complete new lines of the job's log: each rung it reached goes to ASHA."""
        path = self.dir / f"job-{jid}.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(self.active[jid])
                data = f.read()
        except FileNotFoundError:
            return
        lines = data[: data.rfind(b"\n") + 1]
        self.active[jid] += len(lines)
        config = self.jobs[jid]["config"]["id"]
        for line in lines.splitlines():
            rec = json.loads(line)
            if rec["event"] != "rung" or jid in self.stopping:
                continue
            rung, acc = rec["rung"], rec["accuracy"]
            self.reports.append((rec["t"], config, rung, acc))
            self.checkpoints[(config, rung)] = str(self.dir / f"job-{jid}-rung-{rung}.pkl")
            if self.asha.report(config, rung, acc):
                (self.dir / f"job-{jid}.go-{rung}").touch()
            else:
                self.stopping.add(jid)
                self.stop_at[jid] = time.time()
                self.backend.kill(jid)

    def figures(self) -> dict[str, Any]:
        """What the search saw (counts of what ran come from the store or the trials)."""
        wall = self.t_end - self.t0
        hits = [t for t, _, _, a in self.reports if a >= self.args.target]
        best = self.asha.best()
        return {"wall_s": wall, "time_to_target_s": min(hits) - self.t0 if hits else None,
                "best_accuracy": best[0] if best else 0.0, "trials": len(self.jobs),
                "trials_per_hour": len(self.jobs) / wall * 3600, "kills_asked": len(self.stopping),
                "configs": self.asha.sampled}  # fmt: skip


def wait_for(check: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s")
        time.sleep(TICK)


MakeSearch = Callable[[Any, int, bool], Search]


def trial_tags(run: str, job: dict[str, Any]) -> dict[str, str]:
    return {"hpo": run, "role": "trial", "job": str(job["job"]), "config": str(job["config"]["id"]),
            "start": str(job["start"])}  # fmt: skip


def site_shape(args: argparse.Namespace) -> tuple[Any, str, int]:
    """The site of ``--site``, its store and the cores it may hold at once; its nodes' cores
    replace ``--cores-per-node`` (the trials' largest)."""
    from balsam_dask.deploy.site import load_site

    site = load_site(args.site)
    args.cores_per_node = site.node.cores_per_node or args.cores_per_node
    return site, site.store, site.total_cores or args.nodes * args.cores_per_node


def store_figures(url: str, run: str, cores_per_node: int, search: Search) -> dict[str, Any]:
    """What the store holds of the run's trials: their ends by state, the promotions (tasks
    that resume a paused configuration, created after a result), the utilization (each RUNNING
    to the task's next event, times its cores, over the allocations of the scheduler that ran
    them, times their nodes' cores) and the median seconds from the search's decision to stop
    a trial to its KILLED event."""
    from balsam_dask.store import Store

    with Store(url, read_only=True) as store:
        tasks = store.tasks(tags={"hpo": run, "role": "trial"}, limit=None)
        events = store.events(t.id for t in tasks)
        sessions = {t.session_id for t in tasks} | {t.lease_owner for t in tasks}  # futures: the scheduler's
        allocations = [a for a in store.allocations() if a.session_id in sessions and a.started_at is not None]
    by_id = {t.id: t for t in tasks}
    spans: list[tuple[float, float, int]] = []
    started: dict[int, float] = {}
    lags: list[float] = []
    for e in sorted(events, key=lambda e: (e.ts, e.id)):
        if e.task_id in started:
            spans.append((started.pop(e.task_id), e.ts, by_id[e.task_id].cores))
        if e.to_state == "RUNNING":
            started[e.task_id] = e.ts
        if e.to_state == "KILLED" and (job := int(by_id[e.task_id].tags["job"])) in search.stop_at:
            lags.append(e.ts - search.stop_at[job])
    held = [(a.started_at or 0.0, a.ended_at or time.time(), a.nodes * cores_per_node) for a in allocations]
    states = [t.state for t in tasks]
    first_end = min((end for _, end, _ in spans), default=0.0)
    promotions = [t for t in tasks if t.tags.get("start") != "0"]
    return {"finished": states.count("FINISHED"), "killed": states.count("KILLED"), "failed": states.count("FAILED"),
            "promotions": len(promotions), "promotions_after_a_result": sum(t.created_at >= first_end
                                                                            for t in promotions),
            "utilization": utilization(spans, held), "kill_lag_s": median(lags)}  # fmt: skip


def report_figures(url: str, work: Path) -> dict[str, Any]:
    """The run's report (``balsam_dask.report``): its plots as PNG files in ``work/report`` and
    its headline utilization (busy core-seconds over what the allocations held)."""
    import balsam_dask
    from balsam_dask.reports.plots import write_pngs

    r = balsam_dask.report(url)
    write_pngs(r, work / "report")
    u = r.summary.get("utilization")
    return {"report_utilization": u if isinstance(u, (int, float)) else None}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ---------------------------------------------------------------- futures
class FuturesBackend:
    """``isolate``: each trial in a process of its own (which a kill stops), else in a worker's thread."""

    def __init__(self, client: Any, run: str, isolate: bool) -> None:
        self.client, self.run, self.isolate = client, run, isolate
        self.futures: dict[int, Any] = {}

    def submit(self, jobs: list[dict[str, Any]]) -> None:
        from benchmarks.hpo_trial import train

        for job in jobs:
            self.futures[job["job"]] = self.client.submit(
                train, job, cores=job["cores"], isolate=self.isolate, tags=trial_tags(self.run, job),
                name=f"trial-{job['job']}", pure=False,
            )  # fmt: skip

    def kill(self, jid: int) -> None:
        self.client.kill(self.futures[jid], reason="ASHA stopped the trial")

    def ended(self) -> list[int]:
        done = [j for j, f in self.futures.items() if f.done()]
        for j in done:
            del self.futures[j]
        return done


def futures_mode(args: argparse.Namespace, work: Path, make_search: MakeSearch) -> dict[str, Any]:
    from balsam_dask import Client, LocalEnsembleCluster

    run = f"futures-{os.getpid()}"
    url, cluster, cores = f"sqlite:///{work}/store.db", None, args.nodes * args.cores_per_node
    if args.site:
        from balsam_dask.deploy.site import adapt_for_site, cluster_for_site

        site, url, cores = site_shape(args)
        cluster = cluster_for_site(site)
        if site.is_batch:
            adapt_for_site(cluster, site)
    else:
        cluster = LocalEnsembleCluster(nodes=args.nodes, cores_per_node=args.cores_per_node, store=url,
                                       workdir=str(work / "tasks"))  # fmt: skip
    with cluster, Client(cluster) as client:
        client.submit(warm_up, tags={"hpo": run, "role": "warmup"}).result()
        client.run(warm_up)
        search = make_search(FuturesBackend(client, run, args.isolate), cores, False)
        search.run()
        client.flush()
    return {**search.figures(), **store_figures(url, run, args.cores_per_node, search), **report_figures(url, work)}


# ---------------------------------------------------------------- serve
class ServeBackend:
    """``isolate``: a timeout on each row, which runs its function in a process of its own;
    ``service``: the ``balsam-dask serve`` process (the search stops if it exits)."""

    def __init__(self, store: Any, run: str, isolate: bool, service: subprocess.Popen[Any]) -> None:
        self.store, self.run, self.isolate, self.service = store, run, isolate, service
        self.extra = {"timeout": TRIAL_TIMEOUT} if isolate else {}
        self.ids: dict[int, int] = {}  # job -> task id, while it has not ended

    def submit(self, jobs: list[dict[str, Any]]) -> None:
        rows = [{"function": FUNCTION, "args": [job], "cores": job["cores"], "tags": trial_tags(self.run, job),
                 "name": f"trial-{job['job']}", **self.extra} for job in jobs]  # fmt: skip
        for job, tid in zip(jobs, self.store.add_tasks(rows), strict=True):
            self.ids[job["job"]] = tid

    def kill(self, jid: int) -> None:
        self.store.kill_tasks(ids=[self.ids[jid]])

    def ended(self) -> list[int]:
        if self.service.poll() is not None:
            raise RuntimeError(f"balsam-dask serve exited {self.service.returncode} during the search")
        if not self.ids:
            return []
        states = {t.id: t.state for t in self.store.tasks(ids=list(self.ids.values()), limit=None)}
        done = [j for j, tid in self.ids.items() if states[tid] in ENDED]
        for j in done:
            del self.ids[j]
        return done


def serve_mode(args: argparse.Namespace, work: Path, make_search: MakeSearch) -> dict[str, Any]:
    from balsam_dask.store import Store

    run = f"serve-{os.getpid()}"
    url, cores = f"sqlite:///{work}/store.db", args.nodes * args.cores_per_node
    where = ["--local", "--nodes", str(args.nodes), "--cores-per-node", str(args.cores_per_node),
             "--workdir", str(work / "tasks")]  # fmt: skip
    if args.site:
        _, url, cores = site_shape(args)
        where = ["--site", args.site]
    store = Store(url, kind="api")
    cmd = [sys.executable, "-m", "balsam_dask.cli", "--store", url, "serve", *where, "--tag", f"hpo={run}",
           "--persistent", "--progress", "none"]  # fmt: skip
    log = open(work / "serve.log", "w")  # noqa: SIM115 (closed below, after the service)
    service = subprocess.Popen(cmd, env=environ(), stdout=log, stderr=subprocess.STDOUT)
    try:
        # one warm-up per core at once: every node's worker gets some
        warm = store.add_tasks([{"function": WARM_UP, "tags": {"hpo": run, "role": "warmup"}}] * cores)

        def warmed() -> bool:
            if service.poll() is not None:
                raise RuntimeError(f"balsam-dask serve exited {service.returncode}: see {work / 'serve.log'}")
            return all(t.state == "FINISHED" for t in store.tasks(ids=warm, limit=None))

        wait_for(warmed, "the warm-up tasks of balsam-dask serve", 3600 if args.site else 120)  # a queue waits
        search = make_search(ServeBackend(store, run, args.isolate, service), cores, False)
        search.run()
    finally:
        stop(service)
        log.close()
        store.close()
    return {**search.figures(), **store_figures(url, run, args.cores_per_node, search), **report_figures(url, work)}


def stop(process: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """SIGTERM (serve drains and exits), then SIGKILL if it is still there after ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------- bare Dask
class DaskBackend:
    isolate = False  # a cancel does not stop a running task

    def __init__(self, client: Any) -> None:
        self.client = client
        self.futures: dict[int, Any] = {}

    def submit(self, jobs: list[dict[str, Any]]) -> None:
        from benchmarks.hpo_trial import train

        for job in jobs:
            self.futures[job["job"]] = self.client.submit(train, job, resources={"cores": job["cores"]}, pure=False,
                                                          key=f"trial-{job['job']}")  # fmt: skip

    def kill(self, jid: int) -> None:
        """Dask cannot stop a running task: its future is cancelled, the trial sees its stop file."""
        self.futures[jid].cancel()

    def ended(self) -> list[int]:
        done = [j for j, f in self.futures.items() if f.done()]
        for j in done:
            del self.futures[j]
        return done


def trial_figures(search: Search, cores: int) -> dict[str, Any]:
    """What ran, from the trials' own lines (bare Dask has no store): their start and end."""
    spans, lags, ends = [], [], {"finished": 0, "killed": 0, "failed": 0}
    for jid, job in search.jobs.items():
        path = search.dir / f"job-{jid}.jsonl"
        recs = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        start = next((r["t"] for r in recs if r["event"] == "start"), None)
        end = next((r for r in recs if r["event"] == "end"), None)
        if start is None or end is None:
            ends["failed"] += 1
            continue
        spans.append((start, end["t"], job["cores"]))
        ends["killed" if end["stopped"] else "finished"] += 1
        if end["stopped"]:
            lags.append(end["t"] - search.stop_at[jid])
    promotions = sum(job["start"] > 0 for job in search.jobs.values())
    return {**ends, "promotions": promotions, "promotions_after_a_result": promotions,
            "utilization": utilization(spans, [(search.t0, search.t_end, cores)]),
            "kill_lag_s": median(lags)}  # fmt: skip


def dask_mode(args: argparse.Namespace, work: Path, make_search: MakeSearch) -> dict[str, Any]:
    import distributed

    cores = args.nodes * args.cores_per_node
    cluster = distributed.LocalCluster(n_workers=args.nodes, threads_per_worker=args.cores_per_node, processes=True,
                                       resources={"cores": args.cores_per_node}, dashboard_address=None)  # fmt: skip
    with cluster, distributed.Client(cluster) as client:
        client.run(warm_up)
        search = make_search(DaskBackend(client), cores, True)
        search.run()
    return {**search.figures(), **trial_figures(search, cores)}
