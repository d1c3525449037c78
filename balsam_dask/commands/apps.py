"""``balsam-dask app add|ls|show|rm``: the apps of the task database.

balsam-dask app add sim --command './sim --n {n} --out {out}' --cores 2 --walltime 10m
balsam-dask app add post --argv-json '["python", "post.py", "{run}"]' --hook post=mypkg.hooks:collect
balsam-dask app ls [NAME]
balsam-dask app show NAME [--version N]
balsam-dask app rm NAME [--version N]
"""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from balsam_dask.commands.common import CLIError, add_resource_options, fmt_time, parse_pair, resources_of, table
from balsam_dask.store.api import Store
from balsam_dask.store.ops import AppRecord
from balsam_dask.taskdb.fields import HOOKS


def _command(rec: AppRecord) -> str:
    return rec.command if isinstance(rec.command, str) else shlex.join(rec.command)


def cmd_app(store: Store, args: argparse.Namespace) -> int:
    return {"add": _add, "ls": _ls, "show": _show, "rm": _rm}[args.app_command](store, args)


def _add(store: Store, args: argparse.Namespace) -> int:
    if (args.command_template is None) == (args.argv_json is None):
        raise CLIError("app add needs --command './sim --n {n}' (a template) or --argv-json '[\"./sim\", \"{n}\"]'")
    command: Any = args.command_template
    if args.argv_json is not None:
        try:
            command = json.loads(args.argv_json)
        except ValueError as e:
            raise CLIError(f'--argv-json {args.argv_json!r} is not JSON ({e}); e.g. \'["./sim", "{{n}}"]\'') from None
    hooks = dict(args.hook or [])
    before = {r.version for r in store.apps(args.name)}
    rec = store.add_app(args.name, command, version=args.version, description=args.description,
                        defaults=resources_of(args), hooks=hooks)  # fmt: skip
    what = "is already stored as" if rec.version in before else "added:"
    print(f"app {rec.name} {what} version {rec.version}: {_command(rec)}")
    return 0


def _ls(store: Store, args: argparse.Namespace) -> int:
    rows = [[r.name, r.version, _command(r)[:60], json.dumps(r.defaults, sort_keys=True) if r.defaults else "",
             ",".join(sorted(r.hooks))] for r in store.apps(args.name)]  # fmt: skip
    print(table(rows, ["NAME", "VERSION", "COMMAND", "DEFAULTS", "HOOKS"]))
    return 0


def _show(store: Store, args: argparse.Namespace) -> int:
    r = store.app(args.name, args.version)
    versions = [a.version for a in store.apps(args.name)]
    print(f"app {r.name} version {r.version} (versions: {', '.join(map(str, versions))}), "
          f"added {fmt_time(r.created_at)}")  # fmt: skip
    if r.description:
        print(f"  {r.description}")
    print(f"  command: {_command(r)}")
    print(f"  defaults: {json.dumps(r.defaults, sort_keys=True)}")
    for hook in HOOKS:
        if hook in r.hooks:
            print(f"  {hook} hook: {r.hooks[hook]}")
    return 0


def _rm(store: Store, args: argparse.Namespace) -> int:
    n = store.remove_app(args.name, args.version)
    print(f"removed {n} version(s) of app {args.name}")
    return 0


def add_commands(sub: Any) -> None:
    app = sub.add_parser("app", help="apps: named, versioned command templates (add, ls, show, rm)")
    verbs = app.add_subparsers(dest="app_command", required=True)
    add = verbs.add_parser("add", help="add an app (or a new version of it)")
    add.add_argument("name")
    add.add_argument("--command", dest="command_template", help="a template: './sim --n {n}' (parameters quoted)")
    add.add_argument("--argv-json", help='an argv list as JSON: \'["./sim", "--n", "{n}"]\'')
    add.add_argument("--version", type=int, help="the version (default: the next one)")
    add.add_argument("--description")
    add_resource_options(add)
    add.add_argument("--hook", action="append", type=parse_pair("--hook", "--hook post=mypkg.hooks:collect"),
                     metavar="WHEN=PKG.MOD:FN", help=f"a hook ({', '.join(HOOKS)}) by import path")  # fmt: skip
    ls = verbs.add_parser("ls", help="list apps (every version)")
    ls.add_argument("name", nargs="?")
    for verb, text in (("show", "an app's definition"), ("rm", "remove an app (every version, or one)")):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("name")
        p.add_argument("--version", type=int)


COMMANDS = {"app": cmd_app}


def read_only(args: argparse.Namespace) -> bool:
    return args.command == "app" and args.app_command in ("ls", "show")
