"""``balsam-dask``: create, inspect and query a provenance store.

    balsam-dask init                        create (or upgrade) the store
    balsam-dask ls [--id ID] [--state S] [--tag k=v] [--name GLOB] [--since T] [--limit N] [--watch [SECONDS]]
    balsam-dask show ID                     a task's spec and full history
    balsam-dask summary                     counts by state and the backlog by shape
    balsam-dask app add|ls|show|rm          apps: named, versioned command templates (cli_apps.py)
    balsam-dask submit APP -p k=v ...       add tasks, or --file tasks.{yaml,csv,jsonl} (cli_tasks.py)
    balsam-dask modify|retry|kill|rm        change, retry, kill or remove tasks (ls's filters)
    balsam-dask site init|check DIR         a site directory (site.yaml) for serve (commands/site.py)
    balsam-dask report [--png DIR] [--html FILE]  what ran: throughput, utilization, delays (commands/report.py)

The store comes from ``--store``, ``$BALSAM_DASK_STORE``, Dask config
``balsam-dask.store``, or ``./balsam.db``. Commands that only read it open it read-only (a
store of another user, in a read-only directory). Errors print one line and exit 1 (bad
arguments exit 2); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from balsam_dask.commands import apps as cli_apps
from balsam_dask.commands import report as cli_report
from balsam_dask.commands import serve as cli_serve
from balsam_dask.commands import site as cli_site
from balsam_dask.commands import tasks as cli_tasks
from balsam_dask.commands.common import add_filters, first_line, fmt_time, parse_time, seconds, table, task_id, watch
from balsam_dask.errors import BalsamDaskError, InvalidSpec
from balsam_dask.store.api import Store
from balsam_dask.store.ops import AllocationRecord, TaskRecord
from balsam_dask.store.schema import HEAD
from balsam_dask.store.states import ALLOCATION_ENDED, ALLOCATION_LIVE, RUNNABLE_STATES
from balsam_dask.store.transfers import transfers_of


def _ls_row(t: TaskRecord) -> list[object]:
    tags = ",".join(f"{k}={v}" for k, v in sorted(t.tags.items()))
    return [t.id, t.name or t.key[:40], t.kind, t.state, t.nodes, t.cores, t.gpus, t.attempt,
            fmt_time(t.updated_at), tags]  # fmt: skip


def cmd_init(store: Store, args: argparse.Namespace) -> int:
    print(f"store {store.where} is ready (schema revision {store.revision})")
    return 0


def cmd_ls(store: Store, args: argparse.Namespace) -> int:
    tags = dict(args.tag or [])

    def show() -> None:
        tasks = store.tasks(state=args.state, tags=tags or None, name=args.name, since=args.since, ids=args.id,
                            until=args.until, limit=args.limit, after=args.after, newest_first=args.newest)  # fmt: skip
        header = ["ID", "NAME", "KIND", "STATE", "NODES", "CORES", "GPUS", "ATTEMPT", "UPDATED", "TAGS"]
        print(table([_ls_row(t) for t in tasks], header))
        if len(tasks) == args.limit:
            print(f"(first {args.limit}; next page: --after {tasks[-1].id})", file=sys.stderr)

    return watch(args.watch, show)


def cmd_show(store: Store, args: argparse.Namespace) -> int:
    t = store.task(args.id)
    history = store.history(args.id)
    print(f"task {t.id}  {t.name or ''}  key={t.key}")
    print(f"  kind={t.kind} state={t.state} attempt={t.attempt} priority={t.priority}")
    print(f"  resources: nodes={t.nodes} ranks_per_node={t.ranks_per_node} threads_per_rank={t.threads_per_rank}"
          f" cores/node={t.cores} gpus/node={t.gpus} walltime={t.walltime}")  # fmt: skip
    print(f"  tags: {json.dumps(t.tags, sort_keys=True)}  parents: {t.parents}")
    print(f"  spec: {json.dumps(t.spec, sort_keys=True)}")
    cli_tasks.show_database_fields(t)
    if t.workdir:
        print(f"  workdir: {t.workdir}")
    if t.return_code is not None:
        print(f"  return code: {t.return_code}")
    result = t.result_ref or ("inline" if t.has_result else "none")
    print(f"  result: {result}  payload stored: {t.has_payload}")
    print(f"  created {fmt_time(t.created_at)}  updated {fmt_time(t.updated_at)}")
    if t.error_tail:
        print("  error tail:")
        for line in t.error_tail.splitlines()[-20:]:
            print(f"    {line}")
    rows = [[fmt_time(e.ts) + f".{int(e.ts * 1000) % 1000:03d}", e.attempt, e.from_state or "-", e.to_state,
             e.worker or e.hosts or "-", (e.message or "").splitlines()[0][:80] if e.message else ""]
            for e in history]  # fmt: skip
    print()
    print(table(rows, ["TIME", "ATTEMPT", "FROM", "TO", "WHERE", "MESSAGE"]))
    cli_tasks.show_transfers(transfers_of(store, t.id))
    return 0


def cmd_summary(store: Store, args: argparse.Namespace) -> int:
    counts = store.summary()
    total = sum(counts.values())
    print(table([[s, n] for s, n in counts.items()] + [["total", total]], ["STATE", "TASKS"]))
    backlog = store.backlog()
    if backlog:
        print()
        rows = [
            [b.nodes, b.cores, b.gpus, b.walltime or "-", b.count(RUNNABLE_STATES),
             b.count({"CREATED", "AWAITING_PARENTS"}), b.counts.get("RUNNING", 0)]
            for b in backlog
        ]  # fmt: skip
        print(table(rows, ["NODES", "CORES/NODE", "GPUS/NODE", "WALLTIME<=", "RUNNABLE", "WAITING", "RUNNING"]))
    return 0


def _alloc_row(a: AllocationRecord) -> list[object]:
    released = len((a.info or {}).get("released") or ())
    message = (a.message or "").splitlines()[0][:80] if a.message else ""
    return [a.id, a.system, a.scheduler_id, a.nodes, released, a.state, fmt_time(a.submitted_at),
            fmt_time(a.started_at), fmt_time(a.ended_at), message]  # fmt: skip


def cmd_allocations(store: Store, args: argparse.Namespace) -> int:
    allocs = store.allocations(state=args.state)
    header = ["ID", "SYSTEM", "JOB ID", "NODES", "RELEASED", "STATE", "SUBMITTED", "STARTED", "ENDED", "MESSAGE"]
    print(table([_alloc_row(a) for a in allocs], header))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="balsam-dask", description="Inspect a balsam_dask provenance store.")
    p.add_argument("--store", help="store URL (default: $BALSAM_DASK_STORE, Dask config, ./balsam.db)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help=f"create or upgrade the store (schema {HEAD})")
    ls = sub.add_parser("ls", help="list tasks")
    add_filters(ls)
    ls.add_argument("--since", type=parse_time, help="created at or after (ISO time, epoch, or 10m/2h/1d ago)")
    ls.add_argument("--until", type=parse_time, help="created before")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--after", type=task_id, help="page: ids after this one")
    ls.add_argument("--newest", action="store_true", help="newest first")
    ls.add_argument("--watch", nargs="?", type=seconds, const=2.0, metavar="SECONDS",
                    help="list again every SECONDS (default 2) until Ctrl-C")  # fmt: skip
    show = sub.add_parser("show", help="a task's spec and history")
    show.add_argument("id", type=task_id)
    sub.add_parser("summary", help="counts by state and backlog by shape")
    allocs = sub.add_parser("allocations", help="batch jobs (and local allocations): lifecycle, nodes released")
    allocs.add_argument("--state", action="append", choices=ALLOCATION_LIVE + ALLOCATION_ENDED,
                        help="filter by state (repeatable)")  # fmt: skip
    cli_tasks.add_commands(sub)
    cli_apps.add_commands(sub)
    cli_serve.add_commands(sub)
    cli_site.add_commands(sub)
    cli_report.add_commands(sub)
    return p


COMMANDS = {"init": cmd_init, "ls": cmd_ls, "show": cmd_show, "summary": cmd_summary, "allocations": cmd_allocations,
            **cli_tasks.COMMANDS, **cli_apps.COMMANDS, **cli_serve.COMMANDS, **cli_report.COMMANDS}  # fmt: skip
#: Commands that never write: they open the store read-only.
READ_ONLY = frozenset({"ls", "show", "summary", "allocations", "report"})


def read_only(args: argparse.Namespace) -> bool:
    return args.command in READ_ONLY or cli_apps.read_only(args)


#: Set to 1 to let an unexpected error's traceback through.
DEBUG_ENV = "BALSAM_DASK_DEBUG"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "limit", 1) is not None and getattr(args, "limit", 1) <= 0:
        parser.error(f"--limit {args.limit} must be positive, e.g. --limit 50")
    if args.command == "site":  # no store
        return cli_site.run(args)
    store: Store | None = None
    try:
        if args.command == "serve" and args.site and not args.store:  # the site names its store
            return cli_serve.cmd_serve(None, args)
        store = Store(args.store, create=args.command == "init", kind="cli", read_only=read_only(args))
        if store.snapshot and os.path.exists(f"{store.url.database}-wal"):
            print(f"balsam-dask: note: {store.url.database} is read as it was last checkpointed (its directory "
                  "is not writable here): the latest changes, still in its -wal file, are not shown",
                  file=sys.stderr)  # fmt: skip
        return COMMANDS[args.command](store, args)
    except (BalsamDaskError, InvalidSpec) as e:
        print(f"balsam-dask: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except SQLAlchemyError as e:  # the database answered with an error after the store opened
        print(f"balsam-dask: error: the store's database failed: {first_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug of ours: still one line, with where to get the whole story
        print(f"balsam-dask: internal error: {type(e).__name__}: {first_line(e)} (set {DEBUG_ENV}=1 for the "
              "traceback)", file=sys.stderr)  # fmt: skip
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        return 1
    finally:
        if store is not None:
            store.engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
