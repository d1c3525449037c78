"""What the ``balsam-dask`` commands share: argument types, the task filters, tables."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from balsam_dask import validate
from balsam_dask.errors import BalsamDaskError, InvalidSpec

#: Largest task id (ids are 64-bit signed integers in both databases).
MAX_ID = 2**63 - 1


class CLIError(BalsamDaskError):
    pass


def parse_tag(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"tag {text!r} is malformed; use --tag name=value, e.g. --tag exp=sweep1")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def parse_pair(option: str, example: str) -> Any:
    """An argument type for ``NAME=VALUE`` options (the value a string)."""

    def parse(text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{option} {text!r} is malformed; use {option} NAME=VALUE, e.g. {example}")
        return name.strip(), value

    return parse


def parse_json_pair(text: str) -> tuple[str, Any]:
    """``NAME=JSON`` (``-j n=4``, ``-j 'xs=[1,2]'``): a parameter with a typed value."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError("no NAME=")
        return name.strip(), json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-j {text!r} is malformed; use -j NAME=JSON, e.g. -j n=4 or "
                                         "-j 'sizes=[1, 2]'") from None  # fmt: skip


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON; e.g. --arg 4 or --arg '\"text\"'") from None


def parse_time(text: str) -> float:
    """An ISO date/time, epoch seconds, or an age such as ``10m``, ``2h``, ``1d`` ago."""
    try:
        return float(validate.moment("time", text, time.time()) or 0.0)
    except InvalidSpec:
        raise argparse.ArgumentTypeError(
            f"time {text!r} is malformed; use an ISO time (2026-11-23T10:00), epoch seconds, "
            "or an age such as 30m, 2h, 1d"
        ) from None


def duration(text: str) -> Any:
    """A duration option: seconds as a number, or a string the store parses (``10m``, ``1:00:00``)."""
    try:
        return float(text)
    except ValueError:
        return text


def seconds(text: str) -> float:
    """A positive number of seconds (``--watch 2``)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0; e.g. --watch 2 or --watch 0.5")
    return value


def watch(every: float | None, show: Callable[[], None]) -> int:
    """``show()`` once, or again every ``every`` seconds until Ctrl-C (exit 0): on a terminal
    the screen is cleared first, elsewhere each listing follows a line with its time."""
    if every is None:
        show()
        return 0
    try:
        while True:
            if sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")
            print(f"every {every:g}s: {fmt_time(time.time())}", flush=True)
            show()
            sys.stdout.flush()
            time.sleep(every)
    except KeyboardInterrupt:
        return 0


def task_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"task id {text!r} is not an integer; use e.g. show 1099511627777") from None
    if not 0 < value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"task id {text!r} is out of range: ids are 1 to {MAX_ID}")
    return value


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def add_filters(p: argparse.ArgumentParser) -> None:
    """The task filters of ``ls``, ``modify``, ``retry``, ``kill`` and ``rm`` (all must match)."""
    p.add_argument("--id", action="append", type=task_id, dest="id", help="a task id (repeatable)")
    p.add_argument("--state", action="append", help="filter by state (repeatable)")
    p.add_argument("--tag", action="append", type=parse_tag, help="filter by tag name=value (repeatable)")
    p.add_argument("--name", help="task name or glob (fit-*)")


def filters_of(args: argparse.Namespace, command: str, ids: Sequence[int] = ()) -> dict[str, Any]:
    """The store's filters from the options (``ids``: positional ids too); at least one."""
    all_ids = [*ids, *(args.id or [])]
    filters = {"ids": all_ids or None, "tags": dict(args.tag or []) or None, "state": args.state, "name": args.name}
    if not any(v is not None for v in filters.values()):
        raise CLIError(f"{command} needs task ids or --tag, --state, --name filters, e.g. balsam-dask {command} "
                       "--tag exp=sweep1 or --id 1099511627777")  # fmt: skip
    return filters


#: Resource and run options of ``app add``, ``submit`` and ``modify`` (row fields).
RESOURCE_OPTIONS = ("nodes", "ranks_per_node", "threads_per_rank", "cores", "gpus", "gpus_per_rank", "walltime",
                    "timeout", "retries", "launcher")  # fmt: skip


def add_resource_options(p: argparse.ArgumentParser) -> None:
    for name in RESOURCE_OPTIONS:
        kind: Any = duration if name in ("walltime", "timeout") else str if name == "launcher" else int
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind)
    p.add_argument("--env", action="append", type=parse_pair("--env", "--env OMP_PLACES=cores"), metavar="NAME=VALUE",
                   help="an environment variable (repeatable)")  # fmt: skip


def resources_of(args: argparse.Namespace) -> dict[str, Any]:
    """The resource options given (row fields), ``env`` as a mapping."""
    out = {k: getattr(args, k) for k in RESOURCE_OPTIONS if getattr(args, k) is not None}
    if args.env:
        out["env"] = dict(args.env)
    return out


def first_line(e: BaseException) -> str:
    """The first line of an error (SQLAlchemy appends SQL and a help link on later lines)."""
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__
