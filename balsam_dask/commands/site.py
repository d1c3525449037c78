"""``balsam-dask site init|check``: a site directory for ``balsam-dask serve --site DIR``.

    balsam-dask site init --scheduler local|slurm|pbs|lsf DIR [--force]
    balsam-dask site check DIR

``init`` creates DIR (0700) and a commented DIR/site.yaml (0600) to edit; ``check`` validates it
and prints what the site is. Neither opens a store. Errors: one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from balsam_dask.commands.common import CLIError
from balsam_dask.errors import BalsamDaskError
from balsam_dask.private import private_dir, write_private
from balsam_dask.taskdb.site import SCHEDULERS, SiteConfig, site_template

#: Exit code of every site error (a bad site is a bad argument).
EXIT_ERROR = 2


def add_commands(sub: Any) -> None:
    site = sub.add_parser("site", help="create or check a site directory (site.yaml) for balsam-dask serve")
    cmds = site.add_subparsers(dest="site_command", required=True)
    init = cmds.add_parser("init", help="create DIR and a commented DIR/site.yaml to edit")
    init.add_argument("--scheduler", required=True, choices=SCHEDULERS, help="where the site runs tasks")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--force", action="store_true", help="overwrite an existing site.yaml")
    check = cmds.add_parser("check", help="validate DIR/site.yaml and say what the site is")
    check.add_argument("dir", metavar="DIR")


def run(args: argparse.Namespace) -> int:
    """Run a ``site`` command; errors print one line and exit 2."""
    try:
        return _init(args) if args.site_command == "init" else _check(args)
    except (BalsamDaskError, OSError) as e:
        print(f"balsam-dask: error: {e}", file=sys.stderr)
        return EXIT_ERROR


def _init(args: argparse.Namespace) -> int:
    from balsam_dask.deploy.site import site_file  # (deploy imports Dask: only for this command)

    path = site_file(args.dir)
    if path.exists() and not args.force:
        raise CLIError(f"{path} exists: edit it, or overwrite it with --force, e.g. balsam-dask site init "
                       f"--scheduler {args.scheduler} {args.dir} --force")  # fmt: skip
    if path.parent.exists() and not path.parent.is_dir():
        raise CLIError(f"{path.parent} exists and is not a directory: give a directory, e.g. ./mysite")
    private_dir(path.parent)
    write_private(path, site_template(args.scheduler).encode())
    todo = "" if args.scheduler == "local" else " (set queue, account and cores_per_node)"
    print(f"wrote {path}: edit it{todo}, then: balsam-dask site check {args.dir}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from balsam_dask.deploy.site import load_site, site_file

    site = load_site(args.dir)
    print(f"{site_file(args.dir)} is valid")
    for line in summary(site):
        print(f"  {line}")
    return 0


def summary(site: SiteConfig) -> list[str]:
    """A few lines saying what the site is."""
    n, lim, serve = site.node, site.limits, site.serve
    memory = f", {n.memory_per_node / 1e9:g} GB" if n.memory_per_node else ""
    where = f"{site.local.nodes} local node(s)" if not site.is_batch else f"{site.scheduler} batch jobs"
    batch = ", ".join(f"{f.name}={getattr(site.batch, f.name)}" for f in fields(site.batch)
                      if getattr(site.batch, f.name))  # fmt: skip
    cores = n.cores_per_node if n.cores_per_node is not None else "auto"
    lines = [
        f"scheduler: {site.scheduler} ({where}){'; ' + batch if batch else ''}",
        f"store: {site.store}",
        f"workdir: {site.workdir}",
        f"node: {cores} cores, {n.gpus_per_node} GPUs{memory}; launcher {n.launcher or 'detected'}, "
        f"bind {n.bind or 'default'}",
        f"limits: {lim.min_nodes}-{lim.max_nodes_per_job} nodes per job, {lim.max_total_nodes} in all, "
        f"{lim.max_queued_jobs} jobs queued; walltime {lim.min_walltime:g}-{lim.max_walltime:g} s, "
        f"idle_timeout {lim.idle_timeout:g} s",
        f"serve: idle_ttl {serve.idle_ttl:g} s, lease {serve.lease:g} s, max_in_flight {serve.max_in_flight}, "
        f"persistent {str(serve.persistent).lower()}",
    ]
    if site.tasks.tags or site.tasks.apps:
        tags = ", ".join(f"{k}={v}" for k, v in site.tasks.tags)
        lines.append(f"takes: apps {', '.join(site.tasks.apps) or 'any'}; tags {tags or 'any'}")
    return lines
