"""``balsam-dask report``: what ran, as terminal tables, PNG plots and one HTML page."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from balsam_dask.commands.common import duration, parse_tag, parse_time
from balsam_dask.errors import InvalidSpec
from balsam_dask.store.api import Store

#: Rows a timeline is shown in on the terminal (the PNG and HTML have every interval).
TERMINAL_ROWS = 12
TOP = 15


def add_commands(sub: Any) -> None:
    p = sub.add_parser("report", help="what ran: throughput, utilization, delays, durations, allocations, errors")
    p.add_argument("--store", default=argparse.SUPPRESS, help="store URL (as the global --store)")
    p.add_argument("--since", type=parse_time, help="from (ISO time, epoch, or 10m/2h/1d ago; default: the first task)")
    p.add_argument("--until", type=parse_time, help="to (default: the last change)")
    p.add_argument("--tag", action="append", type=parse_tag, help="only tasks with this tag name=value (repeatable)")
    p.add_argument("--app", help="only tasks of this app")
    p.add_argument("--name", help="only tasks of this name or glob (fit-*)")
    p.add_argument("--interval", type=duration, help="the timelines' step (seconds, or 5m, 1h; default: from the span)")
    p.add_argument("--png", metavar="DIR", help="write the plots as PNG files into DIR")
    p.add_argument("--html", metavar="FILE", help="write one self-contained HTML page")


def output_problem(args: argparse.Namespace) -> str | None:
    """Why ``--png DIR`` or ``--html FILE`` cannot be written, or None."""
    if args.png is not None:
        d = Path(args.png)
        target = d if d.exists() else d.parent if str(d.parent) else Path(".")
        if d.exists() and not d.is_dir():
            return f"--png {args.png!r} is not a directory: give a directory for the PNG files, e.g. --png plots/"
        if not target.is_dir() or not os.access(target, os.W_OK):
            return (f"--png {args.png!r} cannot be written ({target} is not a writable directory): give a "
                    "writable directory, e.g. --png plots/")  # fmt: skip
    if args.html is not None:
        f = Path(args.html)
        parent = f.parent if str(f.parent) else Path(".")
        if f.is_dir():
            return f"--html {args.html!r} is a directory: give a file name, e.g. --html report.html"
        if not parent.is_dir() or not os.access(parent, os.W_OK) or (f.exists() and not os.access(f, os.W_OK)):
            return f"--html {args.html!r} cannot be written ({parent} is not a writable directory): give a file " \
                   "in one, e.g. --html report.html"  # fmt: skip
    return None


def cmd_report(store: Store, args: argparse.Namespace) -> int:
    from balsam_dask.store.reports import report_query

    options = {"since": args.since, "until": args.until, "tags": dict(args.tag or []) or None, "app": args.app,
               "name": args.name, "interval": args.interval}  # fmt: skip
    problem = output_problem(args)
    try:
        report_query(**options)
    except InvalidSpec as e:
        problem = problem or str(e)
    if problem:
        print(f"balsam-dask report: error: {problem}", file=sys.stderr)
        return 2
    r = store.report(**options)
    written = []  # the files first: a terminal closed early (| head) does not cost them
    if args.png is not None or args.html is not None:
        from balsam_dask.reports import html, plots

        images = plots.pngs(r)
        if args.png is not None:
            d = Path(args.png)
            d.mkdir(parents=True, exist_ok=True)
            for name, data in images.items():
                (d / f"{name}.png").write_bytes(data)
            written.append(f"plots: {', '.join(str(d / f'{n}.png') for n in images)}")
        if args.html is not None:
            written.append(f"html: {html.write_html(r, args.html, images)}")
    show(r)
    for line in written:
        print(line)
    return 0


def show(r: Any) -> None:
    """The report on the terminal: the summary and short tables."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from balsam_dask.reports.html import number_text as num

    console = Console(width=max(Console().width, 100))

    def table(title: str, df: pd.DataFrame, index: str | None = None) -> None:
        t = Table(title=title, title_justify="left")
        cols = ([index] if index else []) + [str(c) for c in df.columns]
        for c in cols:
            t.add_column(c, justify="right")
        for key, row in df.iterrows():
            cells = [num(key)] if index else []
            t.add_row(*cells, *(num(v) for v in row))
        console.print(t if len(df) else f"{title}: none")

    s = r.summary
    when = [pd.Timestamp(s[k], unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC") for k in ("start", "end")]
    d = s["delay_s"]
    console.print(f"[bold]{s['store']}[/bold]: {s['tasks']} tasks from {when[0]} to {when[1]}; "
                  f"{s['finished']} finished, {s['failed']} failed, {s['killed']} killed; {s['runs']} runs, "
                  f"{s['retries']} retries")  # fmt: skip
    console.print(f"utilization: cores {_share(s['utilization'])}, GPUs {_share(s['gpu_utilization'])}, nodes "
                  f"{_share(s['node_utilization'])}; {num(s['busy_core_hours'])} of "
                  f"{num(s['allocated_core_hours'])} core-hours busy; {num(s['node_hours'])} node-hours "
                  f"allocated; run delay median {num(d['median'])} s, p90 {num(d['p90'])} s, max "
                  f"{num(d['max'])} s")  # fmt: skip
    for note in s["notes"]:
        console.print(f"[yellow]note: {note}[/yellow]")
    table("Tasks by state", r.states, "state")
    table("Throughput", coarse(r.throughput, "sum")[["finished", "failed", "killed", "cumulative_ended"]], "from")
    util = coarse(r.utilization, "mean")
    table("Utilization (mean)", util[[c for c in util.columns if not c.endswith("_used")]], "from")
    table("Run delays (s)", r.delays)
    table("Run durations by name (s)", r.durations.head(TOP), "name")
    table("Attempts", r.attempts, "attempts")
    cols = ["system", "job_id", "state", "nodes", "released", "queued_s", "running_s", "node_hours"]
    table("Allocations", r.allocations[cols], "id")
    errors = r.errors.head(TOP).assign(examples=lambda e: e["examples"].map(lambda x: ", ".join(map(str, x))))
    table("Errors", errors)


def coarse(df: Any, how: str) -> Any:
    """At most ``TERMINAL_ROWS`` rows: consecutive intervals summed or averaged (cumulative
    columns: their last value)."""
    if len(df) <= TERMINAL_ROWS:
        out = df.copy()
    else:
        groups = [i * TERMINAL_ROWS // len(df) for i in range(len(df))]
        g = df.groupby(groups)
        out = g.sum() if how == "sum" else g.mean()
        for c in [c for c in df.columns if c.startswith("cumulative")]:
            out[c] = g[c].last()
        out.index = g.apply(lambda x: x.index[0])
    out.index = out.index.map(lambda t: t.strftime("%m-%d %H:%M:%S"))
    return out


def _share(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1%}"


COMMANDS = {"report": cmd_report}
