"""The balsam_dask side of benchmarks/qc.py: a plan of calculations run through the futures API
(``futures_child``, in a process of its own) or by ``balsam-dask serve`` from a task file
(``run_serve``), and what the store says afterwards (``energies``, ``usage``).

A plan is a JSON object: ``url`` (the store), ``workdir``, ``nwchem`` (the program), ``launcher``
(None: the cluster's or detected), ``mpi_env`` (variables of the MPI tasks), ``basis``,
``inputs`` (``molecule-method`` -> NWChem input path), ``phases`` (phase -> list of
``[molecule, method, variant, name]``) and ``cluster``: ``{"kind": "local", "nodes", "cores"}``,
``{"kind": "slurm", "nodes", "cores"}`` (the local Slurm cluster) or ``{"kind": "site", "dir"}``;
``slurm_nodes``: whether the nodes are in a Slurm job.
"""

from __future__ import annotations

import importlib
import pickle
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from qc_chem import parse_energy
from serve_throughput import cli

FUNCTION = "benchmarks.qc_chem:pyscf_energy"
#: The variables every 2-node NWChem task gets: Debian's Open MPI 4.1 has no one-sided (RMA)
#: component that works between nodes over TCP, and NWChem's ARMCI needs MPI windows
#: (``gmr_create`` fails); UCX's does.
ACROSS_NODES_ENV = {"OMPI_MCA_osc": "ucx"}
NODES = {"mpi2n": 2}
RANKS_PER_NODE = {"mpi1": 1, "mpi2": 2, "mpi2n": 1}


def nwchem_argv(plan: dict[str, Any], molecule: str, method: str, variant: str = "mpi1") -> list[str]:
    """The NWChem command of a calculation (``variant``: the same command for each)."""
    return [plan["nwchem"], plan["inputs"][f"{molecule}-{method}"]]


def extra_env(plan: dict[str, Any], variant: str) -> dict[str, str]:
    """What an MPI task of ``variant`` needs on the plan's cluster besides ``mpi_env``."""
    return ACROSS_NODES_ENV if NODES.get(variant, 1) > 1 else {}


def _cluster(plan: dict[str, Any]) -> tuple[Any, int]:
    """The plan's cluster, started, and the node-workers to wait for (0: an adaptive site's)."""
    from balsam_dask import LocalEnsembleCluster

    c, url, workdir = plan["cluster"], plan["url"], plan["workdir"]
    if c["kind"] == "local":
        return LocalEnsembleCluster(nodes=c["nodes"], cores_per_node=c["cores"], store=url, workdir=workdir), c["nodes"]
    if c["kind"] == "slurm":
        from balsam_dask.deploy.clusters import SlurmEnsembleCluster

        cluster = SlurmEnsembleCluster(cores_per_node=c["cores"], walltime="00:20:00", log_directory=workdir,
                                       workdir=workdir, poll_interval=1.0, store=url)  # fmt: skip
        cluster.request(c["nodes"])
        return cluster, c["nodes"]
    from balsam_dask.deploy.site import adapt_for_site, cluster_for_site, load_site

    site = load_site(c["dir"])
    cluster = cluster_for_site(site, store=url)
    if site.is_batch:
        adapt_for_site(cluster, site)
        return cluster, 0
    return cluster, site.local.nodes


def _submit(client: Any, plan: dict[str, Any], molecule: str, method: str, variant: str, name: str,
            phase: str) -> Any:  # fmt: skip
    tags = {"phase": phase}
    if variant == "pyscf":
        mod, fn = FUNCTION.split(":")
        energy = getattr(importlib.import_module(mod), fn)
        return client.submit(energy, molecule, method, plan["basis"], name=name, tags=tags, pure=False)
    argv = nwchem_argv(plan, molecule, method, variant)
    if variant == "serial":
        return client.submit_app(argv, name=name, tags=tags)
    env = {**plan["mpi_env"], **extra_env(plan, variant)}
    return client.submit_mpi(argv, nodes=NODES.get(variant, 1), ranks_per_node=RANKS_PER_NODE[variant],
                             launcher=plan["launcher"], env=env, name=name, tags=tags)  # fmt: skip


def futures_child(plan: dict[str, Any]) -> dict[str, Any]:
    """Every phase of the plan through ``balsam_dask.Client`` on the plan's cluster, one phase
    after another: each phase's seconds from its first submit to its last result, and the
    command of the first MPI task (what the direct loop runs)."""
    from balsam_dask import Client

    cluster, nodes = _cluster(plan)
    out: dict[str, Any] = {"seconds": {}, "command": None}
    with cluster, Client(cluster) as client:
        if nodes:
            client.wait_for_workers(nodes, timeout=300)
        for phase, calcs in plan["phases"].items():
            t0 = time.perf_counter()
            futures = [_submit(client, plan, *calc, phase) for calc in calcs]
            results = client.gather(futures)
            out["seconds"][phase] = time.perf_counter() - t0
            for calc, res in zip(calcs, results, strict=True):
                if out["command"] is None and calc[2] in RANKS_PER_NODE:
                    out["command"] = list(res.command)
    return out


def task_rows(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's calculations as task-file rows (apps ``nwchem`` and ``nwchem-mpi``, the PySCF function)."""
    rows: list[dict[str, Any]] = []
    for phase, calcs in plan["phases"].items():
        for molecule, method, variant, name in calcs:
            row: dict[str, Any] = {"name": name, "tags": {"phase": phase}}
            if variant == "pyscf":
                row.update(function=FUNCTION, args=[molecule, method, plan["basis"]])
            else:
                row.update(app="nwchem" if variant == "serial" else "nwchem-mpi",
                           params={"input": plan["inputs"][f"{molecule}-{method}"]})  # fmt: skip
            if variant in RANKS_PER_NODE:
                row.update(nodes=NODES.get(variant, 1), ranks_per_node=RANKS_PER_NODE[variant])
                if extra_env(plan, variant):
                    row["env"] = extra_env(plan, variant)
            rows.append(row)
    return rows


def run_serve(plan: dict[str, Any], where: list[str]) -> dict[str, float]:
    """The apps ``nwchem`` and ``nwchem-mpi`` (added in this process: what ``balsam-dask app add``
    does, without two more interpreter starts), ``balsam-dask submit --file tasks.yaml``, then one
    ``balsam-dask serve`` per phase (``--tag phase=...``; ``where``: ``--local ...`` or ``--site
    DIR``): each serve command's seconds, start to exit."""
    from balsam_dask.store import Store

    url, d = plan["url"], Path(plan["workdir"])
    d.mkdir(parents=True, exist_ok=True)
    base = [plan["nwchem"], "{input}"]
    with Store(url) as store:
        store.add_app("nwchem", base)
        launcher = {"launcher": plan["launcher"]} if plan["launcher"] else {}
        store.add_app("nwchem-mpi", base, defaults={**launcher, "env": plan["mpi_env"]})
    tasks = d / "tasks.yaml"
    tasks.write_text(yaml.safe_dump(task_rows(plan), sort_keys=False))
    cli(url, "submit", "--file", str(tasks))
    return {phase: cli(url, "serve", *where, "--idle-ttl", "1", "--progress", "none", "--workdir", str(d),
                       "--tag", f"phase={phase}", cwd=str(d)) for phase in plan["phases"]}  # fmt: skip


def energies(url: str, phase: str) -> dict[str, float]:
    """Each FINISHED task's energy, by task name: an NWChem task's from its stdout, a PySCF
    task's from its stored result."""
    from balsam_dask.store import Store

    out = {}
    with Store(url) as store:
        tasks = store.tasks(tags={"phase": phase}, limit=None)
        bad = [f"{t.name}: {t.state}" for t in tasks if t.state != "FINISHED"]
        if bad:
            raise RuntimeError(f"{url}: tasks of phase {phase} did not finish: {', '.join(bad[:5])}")
        for t in tasks:
            if t.kind == "python":
                out[str(t.name)] = float(pickle.loads(store.result_bytes(t.id) or b""))
            else:
                out[str(t.name)] = parse_energy((Path(t.workdir or "") / "stdout.txt").read_text())
    return out


def usage(url: str, phase: str) -> dict[str, float]:
    """The phase's span from the store's events (first RUNNING to last RUN_DONE), the median gap
    from one task's RUN_DONE to the next task's RUNNING (tasks that run one at a time: what the
    machinery adds between them, whatever the tasks' own run times), and its utilization from
    ``balsam_dask.report`` over that span: busy core-seconds over what the allocations held (its
    own window would start at the tasks' creation: for serve's second phase, while the first ran)."""
    import balsam_dask
    from balsam_dask.reports.plots import write_pngs
    from balsam_dask.store import Store

    with Store(url) as store:
        events = store.events(t.id for t in store.tasks(tags={"phase": phase}, limit=None))
    starts = sorted(e.ts for e in events if e.to_state == "RUNNING")
    ends = sorted(e.ts for e in events if e.to_state == "RUN_DONE")
    gaps = [b - a for a, b in zip(ends[:-1], starts[1:], strict=True)]
    report = balsam_dask.report(url, tags={"phase": phase}, since=starts[0], until=ends[-1])
    # the phase's plots beside its SQLite store, as <store>-report-<phase>/ (else in the current directory)
    db = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else Path.cwd() / "store"
    write_pngs(report, db.parent / f"{db.stem}-report-{phase}")
    return {"span_s": ends[-1] - starts[0], "gap_ms": statistics.median(gaps) * 1000 if gaps else 0.0,
            "utilization": float(report.summary["utilization"])}  # fmt: skip


def wrap_ms(url: str, phase: str) -> float:
    """The median time an NWChem task of ``phase`` spent in balsam_dask around its own process:
    RUNNING -> RUN_DONE (events) less the process's run time (the task's ``AppResult.duration``)."""
    from balsam_dask.store import Store

    out = []
    with Store(url) as store:
        tasks = [t for t in store.tasks(tags={"phase": phase}, limit=None) if t.kind != "python"]
        seen: dict[int, dict[str, float]] = {}
        for e in store.events(t.id for t in tasks):
            seen.setdefault(e.task_id, {})[e.to_state] = e.ts
        for t in tasks:
            result = pickle.loads(store.result_bytes(t.id) or b"")
            out.append(seen[t.id]["RUN_DONE"] - seen[t.id]["RUNNING"] - result.duration)
    return statistics.median(out) * 1000
