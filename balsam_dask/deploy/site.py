"""A site on disk: ``DIR/site.yaml`` read and checked (``taskdb/site.py``), its paths resolved
against ``DIR``, and the cluster it runs: a LocalEnsembleCluster or a batch ensemble cluster,
sized by the packing policy within the site's limits (``adapt_for_site``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from balsam_dask.deploy.allocations import AllocationCluster
from balsam_dask.deploy.clusters import LSFEnsembleCluster, PBSEnsembleCluster, SlurmEnsembleCluster
from balsam_dask.deploy.ensemble import EnsembleCluster
from balsam_dask.deploy.local import LocalEnsembleCluster
from balsam_dask.errors import InvalidSiteConfig, InvalidSpec
from balsam_dask.packing.policy import BacklogShape
from balsam_dask.taskdb.site import SiteConfig, parse_site

#: The site's file in its directory.
SITE_FILE = "site.yaml"
BATCH_CLUSTERS: dict[str, type[EnsembleCluster]] = {
    "slurm": SlurmEnsembleCluster, "pbs": PBSEnsembleCluster, "lsf": LSFEnsembleCluster,
}  # fmt: skip


def site_file(site_dir: str | os.PathLike[str]) -> Path:
    return Path(site_dir).expanduser().absolute() / SITE_FILE


def load_site(site_dir: str | os.PathLike[str]) -> SiteConfig:
    """The site of ``site_dir``: its ``site.yaml`` checked, the store's file and the workdir
    absolute (relative ones are relative to ``site_dir``; no workdir: ``site_dir`` itself)."""
    path = site_file(site_dir)
    base = path.parent
    init = f"create it with: balsam-dask site init --scheduler local {site_dir}"
    if not base.is_dir():
        what = "is not a directory" if base.exists() else "does not exist"
        raise InvalidSiteConfig(str(base), "", f"the site directory {what}: {init}")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidSiteConfig(str(path), "", f"{path} does not exist: {init}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidSiteConfig(str(path), "", f"cannot be read ({e}): give a readable UTF-8 YAML file, "
                                "e.g. one written by balsam-dask site init") from None  # fmt: skip
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InvalidSiteConfig(str(path), "", f"{at}YAML syntax error ({problem}): write `key: value` "
                                "lines, nested keys indented, e.g. batch: {queue: debug}") from None  # fmt: skip
    site = parse_site(data, str(path), cpu_count=os.cpu_count())
    store = site.store if "://" in site.store else str(_under(base, site.store))
    return replace(site, store=store, workdir=str(_under(base, site.workdir or ".")))


def _under(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def cluster_for_site(site: SiteConfig, *, nodes: int | None = None, asynchronous: bool = False, loop: Any = None,
                     store: str | None = None) -> AllocationCluster:  # fmt: skip
    """The site's cluster, not adapted yet. A local site starts ``nodes`` emulated nodes (default
    ``local.nodes``; 0: none until asked for); a batch site none (see :func:`adapt_for_site`).
    ``store``: another store than the site's."""
    n, lim = site.node, site.limits
    common: dict[str, Any] = {
        "cores_per_node": n.cores_per_node, "gpus_per_node": n.gpus_per_node, "store": store or site.store,
        "walltime": lim.job_walltime, "workdir": site.workdir, "launcher": n.launcher,
        "asynchronous": asynchronous, "loop": loop,
    }  # fmt: skip
    if n.bind is not None:
        common["bind"] = n.bind
    if not site.is_batch:
        count = site.local.nodes if nodes is None else nodes
        return LocalEnsembleCluster(count, memory_per_node=n.memory_per_node,
                                    max_nodes_per_job=max(count, lim.max_nodes_per_job), **common)  # fmt: skip
    if nodes is not None:
        raise InvalidSpec(f"nodes={nodes!r} is for local sites: a {site.scheduler} site's allocations are sized by "
                          "its limits, e.g. adapt_for_site(cluster, site)")  # fmt: skip
    b = site.batch
    directives = (f"--partition={b.partition}",) if b.partition else ()
    return BATCH_CLUSTERS[site.scheduler](
        memory_per_node=None if n.memory_per_node is None else str(n.memory_per_node), queue=b.queue,
        account=b.account, job_extra_directives=directives + b.job_extra_directives,
        job_script_prologue=b.job_prologue, python=b.python, max_nodes_per_job=lim.max_nodes_per_job, **common,
    )  # fmt: skip


def adapt_for_site(
    cluster: AllocationCluster,
    site: SiteConfig,
    extra_backlog: Callable[[], list[BacklogShape]] | None = None,
    interval: Any = "2s",
) -> Any:
    """Size the cluster's allocations with the packing policy within the site's limits
    (``extra_backlog()``: shapes of work the scheduler has not been given yet); the adaptive."""
    lim = site.limits
    return cluster.adapt(
        min_nodes=lim.min_nodes, max_nodes_per_job=lim.max_nodes_per_job, max_walltime=lim.max_walltime,
        min_walltime=lim.min_walltime, max_queued_jobs=lim.max_queued_jobs, max_total_nodes=lim.max_total_nodes,
        queued_timeout=lim.queued_timeout, idle_timeout=lim.idle_timeout,
        default_task_walltime=lim.default_task_walltime, interval=interval, extra_backlog=extra_backlog,
    )  # fmt: skip
