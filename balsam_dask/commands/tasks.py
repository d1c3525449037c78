"""``balsam-dask submit|modify|retry|kill|rm``: tasks from the database side.

    balsam-dask submit sim -p n=4 -p out=run4.h5 --cores 2 --tag exp=sweep1 --name sim-4
    balsam-dask submit mypkg.tasks:fit -j alpha=0.1 --parent 1099511627777
    balsam-dask submit --file tasks.yaml          (or .csv, .jsonl: one task per row, the fields of submit)
    balsam-dask modify --tag exp=sweep1 --state READY --walltime 20m -p steps=200
    balsam-dask retry --state FAILED --tag exp=sweep1
    balsam-dask kill 1099511627777 --tag exp=sweep1
    balsam-dask rm --state FINISHED --tag exp=sweep1

``-p NAME=VALUE`` gives a string, ``-j NAME=JSON`` a typed value. ``modify``, ``retry``,
``kill`` and ``rm`` select with ``ls``'s filters (``--id``, ``--tag``, ``--state``, ``--name``;
all must match).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from balsam_dask.commands.common import (
    CLIError,
    add_filters,
    add_resource_options,
    filters_of,
    fmt_time,
    parse_json,
    parse_json_pair,
    parse_pair,
    parse_tag,
    resources_of,
    table,
    task_id,
)
from balsam_dask.store.api import Store
from balsam_dask.store.ops import TaskRecord
from balsam_dask.taskdb.fields import ON_PARENT_FAILURE
from balsam_dask.taskdb.files import load_task_file
from balsam_dask.taskdb.job import Transfer


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {**dict(args.p or []), **dict(args.j or [])}


def cmd_submit(store: Store, args: argparse.Namespace) -> int:
    if (args.target is None) == (args.file is None):
        raise CLIError("submit needs an app (or a function pkg.mod:fn) or --file tasks.yaml, not both; e.g. "
                       "balsam-dask submit sim -p n=4")  # fmt: skip
    t0 = time.perf_counter()
    if args.file is not None:
        given = {k: v for k, v in vars(args).items() if k in _ROW_OPTIONS and v}
        if given:
            raise CLIError(f"--file takes every field from the file: drop --{next(iter(given)).replace('_', '-')}")
        loaded = load_task_file(args.file)
        ids = store.add_tasks(loaded.rows, labels=loaded.labels)
    else:
        ids = store.add_tasks([_row(args)], labels=["submit"])
    if not ids:
        print(f"{args.file} holds no tasks: nothing added")
        return 0
    states = Counter(t.state for t in store.tasks(ids=ids[:1000], limit=None))
    counts = ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
    if len(ids) == 1:
        print(f"added task {ids[0]} ({counts})")
    else:
        elapsed = time.perf_counter() - t0
        shown = "" if len(ids) <= 1000 else " among the first 1000"
        print(f"added {len(ids)} tasks, ids {ids[0]} to {ids[-1]}, in {elapsed:.1f} s ({counts}{shown})")
    return 0


def _row(args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"function" if ":" in args.target else "app": args.target, **resources_of(args)}
    for field in ("version", "name", "priority", "on_parent_failure", "workdir"):
        if getattr(args, field) is not None:
            row[field] = getattr(args, field)
    for field, value in (("params", _params(args)), ("tags", dict(args.tag or [])), ("parents", args.parent),
                         ("input_files", args.input_file), ("stage_in", args.stage_in)):  # fmt: skip
        if value:
            row[field] = value
    if args.arg:
        row["args"] = args.arg
    if args.isolate:
        row["isolate"] = True
    if args.stage_out:
        row["stage_out"] = [{"src": src, "dest": dest} for src, dest in args.stage_out]
    return row


def cmd_modify(store: Store, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = resources_of(args)
    for field, value in (("params", _params(args)), ("tags", dict(args.set_tag or [])), ("priority", args.priority),
                         ("on_parent_failure", args.on_parent_failure)):  # fmt: skip
        if value is not None and value != {}:
            changes[field] = value
    if not changes:
        raise CLIError("modify needs a change, e.g. --walltime 20m, -p n=8, --set-tag stage=2 or --priority 5")
    out = store.modify_tasks(changes, **filters_of(args, "modify"))
    _report(f"modified {out.done} task(s)", out.skipped, "matched but are not database tasks waiting to run")
    return 0


def cmd_retry(store: Store, args: argparse.Namespace) -> int:
    out = store.retry_tasks(**filters_of(args, "retry"))
    _report(f"retried {out.done} task(s) (FAILED -> RESTART_READY)", out.skipped,
            "matched but are not failed database tasks, or a parent of theirs stays failed")  # fmt: skip
    return 0


def cmd_kill(store: Store, args: argparse.Namespace) -> int:
    out = store.kill_tasks(**filters_of(args, "kill", args.ids))
    print(f"killed {out.done} waiting task(s); kill requested for {out.skipped} unfinished task(s) (running, or a "
          "client's: their scheduler or service kills them)")  # fmt: skip
    return 0


def cmd_rm(store: Store, args: argparse.Namespace) -> int:
    out = store.remove_tasks(**filters_of(args, "rm"))
    _report(f"removed {out.done} task(s) and their events", out.skipped,
            "kept: not ended (kill them first), or with a child that has not ended")  # fmt: skip
    return 0


def _report(done: str, skipped: int, why: str) -> None:
    print(done)
    if skipped:
        print(f"{skipped} task(s) {why}", file=sys.stderr)


def show_database_fields(t: TaskRecord) -> None:
    """The lines of ``show`` for a database task (nothing for a client's task)."""
    if t.target is None:
        return
    print(f"  runs: {'app ' + t.target if t.app else 'function ' + t.target}  on parent failure: "
          f"{t.on_parent_failure or 'fail'}")  # fmt: skip
    for label, value in (("params", t.params), ("args", t.args), ("input files", t.input_files),
                         ("stage in", t.stage_in), ("stage out", t.stage_out)):  # fmt: skip
        if value:
            print(f"  {label}: {json.dumps(value, sort_keys=True)}")
    if t.lease_owner is not None:
        print(f"  lease: session {t.lease_owner} until {fmt_time(t.lease_expires)}")


def show_transfers(transfers: Sequence[Transfer]) -> None:
    """The transfers table of ``show`` (nothing when the task made none)."""
    if not transfers:
        return
    rows = [[fmt_time(t.started), t.direction, t.transport, t.src, t.dest, t.attempts,
             "ok" if t.ok else "FAILED", t.nbytes, f"{t.ended - t.started:.1f}", (t.error or "")[:80]]
            for t in transfers]  # fmt: skip
    print()
    print(table(rows, ["STARTED", "DIR", "TRANSPORT", "SRC", "DEST", "ATTEMPTS", "OUTCOME", "BYTES", "SECONDS",
                       "ERROR"]))  # fmt: skip


#: Options of ``submit`` that make one row (refused with --file).
_ROW_OPTIONS = ("target", "version", "name", "priority", "on_parent_failure", "workdir", "p", "j", "arg", "tag",
                "parent", "input_file", "stage_in", "stage_out", "nodes", "ranks_per_node", "threads_per_rank",
                "cores", "gpus", "gpus_per_rank", "walltime", "timeout", "retries", "launcher", "env",
                "isolate")  # fmt: skip


def _add_values(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", action="append", type=parse_pair("-p", "-p n=4"), metavar="NAME=VALUE",
                   help="a parameter, as a string (repeatable)")  # fmt: skip
    p.add_argument("-j", action="append", type=parse_json_pair, metavar="NAME=JSON",
                   help="a parameter as JSON: -j n=4, -j 'xs=[1,2]' (repeatable)")  # fmt: skip
    add_resource_options(p)
    p.add_argument("--priority", type=int)
    p.add_argument("--on-parent-failure", choices=ON_PARENT_FAILURE)


def add_commands(sub: Any) -> None:
    s = sub.add_parser("submit", help="add tasks: an app (or a function pkg.mod:fn) with parameters, or a file")
    s.add_argument("target", nargs="?", help="an app's name, or a function's import path pkg.mod:fn")
    s.add_argument("--file", help="a task file: .yaml, .yml, .csv or .jsonl, one task per row with the "
                   "fields of submit (app or function, params, name, tags, parents, ...)")  # fmt: skip
    s.add_argument("--version", type=int, help="the app's version (default: the latest)")
    s.add_argument("--name")
    _add_values(s)
    s.add_argument("--arg", action="append", type=parse_json, help="a function's positional argument, as JSON")
    s.add_argument("--isolate", action="store_true", help="run the function in a process of its own")
    s.add_argument("--tag", action="append", type=parse_tag, help="a tag name=value (repeatable)")
    s.add_argument("--parent", action="append", type=task_id, help="a parent task's id (repeatable)")
    s.add_argument("--workdir", help="the work directory, relative to the site's")
    s.add_argument("--input-file", action="append", help="a glob of the parents' files to bring in (repeatable)")
    s.add_argument("--stage-in", action="append", help="a file to bring in first: path, file://, host:path")
    s.add_argument("--stage-out", action="append", type=parse_pair("--stage-out", "--stage-out '*.h5=/project/'"),
                   metavar="GLOB=DEST", help="files to copy out after success (repeatable)")  # fmt: skip
    m = sub.add_parser("modify", help="change fields of database tasks waiting to run")
    add_filters(m)
    _add_values(m)
    m.add_argument("--set-tag", action="append", type=parse_tag, metavar="NAME=VALUE", help="set a tag (repeatable)")
    for verb, text in (("retry", "FAILED database tasks -> RESTART_READY"),
                       ("rm", "remove ended (or never started) tasks and their history")):  # fmt: skip
        add_filters(sub.add_parser(verb, help=text))
    k = sub.add_parser("kill", help="kill tasks: waiting database tasks now, the others through their scheduler")
    k.add_argument("ids", nargs="*", type=task_id)
    add_filters(k)


COMMANDS = {"submit": cmd_submit, "modify": cmd_modify, "retry": cmd_retry, "kill": cmd_kill, "rm": cmd_rm}
