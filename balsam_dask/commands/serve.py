"""``balsam-dask serve``: run the store's database tasks on emulated local nodes or a site.

balsam-dask serve --local --nodes 2            (this machine, 2 emulated nodes)
balsam-dask serve --site ~/sites/polaris       (the site's batch system and limits)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from balsam_dask.commands.common import CLIError, duration, parse_tag
from balsam_dask.spec import parse_duration
from balsam_dask.store.api import Store


def add_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the store's database tasks (claims, runs, records them)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="emulated nodes on this machine")
    where.add_argument("--site", metavar="DIR", help="a site directory (balsam-dask site init)")
    p.add_argument("--nodes", type=int, help="local nodes (default 1)")
    p.add_argument("--cores-per-node", type=int, help="cores of each local node (default: this machine's / nodes)")
    p.add_argument("--workdir", help="where work directories go (default: the current directory)")
    p.add_argument("--lease", help="seconds a claim lasts without heartbeat (default 60, or the site's)")
    p.add_argument("--idle-ttl", help="stop after this long with nothing to do (default 300 s, or the site's)")
    p.add_argument("--persistent", action="store_true", help="never stop for idleness")
    p.add_argument("--max-in-flight", type=int, help="tasks submitted at once (default: 4 x the cores, at least 16)")
    p.add_argument("--tag", action="append", type=parse_tag, help="take only tasks with this tag (repeatable)")
    p.add_argument("--app", action="append", help="take only tasks of this app (repeatable)")
    p.add_argument(
        "--no-bundle",
        action="store_true",
        help="one Dask task per database task (default: bundles run by node executors)",
    )
    p.add_argument("--progress", choices=("auto", "live", "plain", "none"), default="auto")


def cmd_serve(store: Store | None, args: argparse.Namespace) -> int:
    # Dask and the cluster are imported here: the other commands start without them
    from balsam_dask.serve.progress import progress_for
    from balsam_dask.serve.service import serve

    if not args.local and not args.site:
        raise CLIError("serve needs where to run: --local (this machine) or --site DIR, "
                       "e.g. balsam-dask serve --local --nodes 2")  # fmt: skip
    if args.site:
        from balsam_dask.serve.sites import site_plan

        plan = site_plan(args.site, nodes=args.nodes, overrides=option_overrides(args),
                         store=store)  # fmt: skip
    else:
        assert store is not None
        plan = _local_plan(args, store)
    callback, context = progress_for(args.progress)
    with context:
        report = asyncio.run(serve(plan.store, plan.make_cluster, plan.options, progress=callback))
    took = report.ended_at - report.started_at
    print(f"serve: {report.finished} finished, {report.failed} failed, {report.cancelled} cancelled, "
          f"{report.created} created by hooks, in {took:.1f} s ({report.reason})", file=sys.stderr)  # fmt: skip
    return 0


def seconds(option: str, text: str | None, example: str) -> float | None:
    """A duration option's seconds (None when not given)."""
    if text is None:
        return None
    try:
        value = parse_duration(option, duration(text))
    except Exception:
        value = None
    if value is None:
        raise CLIError(f"{option} {text!r} is invalid: give seconds or a duration, e.g. {option} {example}")
    return value


def option_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ServeOptions fields given on the command line."""
    out: dict[str, Any] = {}
    lease = seconds("--lease", args.lease, "60")
    ttl = seconds("--idle-ttl", args.idle_ttl, "5m")
    for k, v in (("lease", lease), ("idle_ttl", ttl), ("max_in_flight", args.max_in_flight),
                 ("tags", dict(args.tag) if args.tag else None), ("apps", args.app)):  # fmt: skip
        if v is not None:
            out[k] = v
    if args.persistent:
        out["persistent"] = True
    if args.no_bundle:
        out["bundled"] = False
    return out


def _local_plan(args: argparse.Namespace, store: Store) -> Any:
    from balsam_dask.deploy.local import LocalEnsembleCluster
    from balsam_dask.serve.service import ServeOptions, ServePlan

    options = ServeOptions(**option_overrides(args))
    nodes = 1 if args.nodes is None else args.nodes
    if nodes < 1:
        raise CLIError(f"--nodes {nodes} is invalid: give at least 1, e.g. --nodes 2")
    url = store.url.render_as_string(hide_password=False)

    async def make() -> Any:
        return await LocalEnsembleCluster(nodes=nodes, cores_per_node=args.cores_per_node, store=url,
                                          workdir=args.workdir or os.getcwd(), asynchronous=True)  # fmt: skip

    return ServePlan(store, make, options)


COMMANDS = {"serve": cmd_serve}
