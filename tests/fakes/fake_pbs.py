"""The fake PBS's commands: ``qsub``, ``qstat`` (``-f``, ``-x``), ``qdel``, ``pbs_release_nodes``
(see ``fakebatch``)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.fakes.fakebatch import (
    FINAL,
    Usage,
    cancel,
    directives,
    find,
    parse_options,
    records,
    refresh,
    release,
    seconds,
    state_dir,
    submit,
)


def qsub(args: list[str]) -> int:
    takes = {"-N", "-l", "-q", "-A", "-o", "-e", "-j", "-k", "-m", "-M", "-r", "-W", "-v", "-S", "-P"}
    if not args or args[-1].startswith("-"):
        raise Usage("usage: qsub [options] script (this fake reads a script file)")
    path = args[-1]
    script = Path(path).read_text()
    o = parse_options(directives(script, "#PBS") + args[:-1], takes, {"-V", "-h"}, "qsub")
    res: dict[str, str] = {}
    for spec in o.get("-l", []):
        for item in spec.split(","):
            key, _, value = item.partition("=")
            res[key] = value
    nodes = mpiprocs = 0
    for chunk in res.get("select", "1").split("+"):
        count, *resources = chunk.split(":")
        if not count.isdigit():
            count, resources = "1", [count, *resources]
        kv = dict(r.partition("=")[::2] for r in resources)
        nodes += int(count)
        mpiprocs = max(mpiprocs, int(kv.get("mpiprocs", "1")))
    name = o.get("-N", [os.path.basename(path)])[-1]
    opts = {"name": name, "nodes": nodes, "mpiprocs": mpiprocs, "walltime": seconds(res.get("walltime", "3600")),
            "queue": o.get("-q", ["workq"])[-1], "account": o.get("-A", [None])[-1], "resources": res,
            "join": o.get("-j", ["n"])[-1], "out": o.get("-o", [None])[-1], "err": o.get("-e", [None])[-1]}  # fmt: skip
    rec = submit("pbs", script, opts, "qsub")
    print(rec["id"])
    return 0


def _ctime(t: float | None) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(t or 0))


def _pbs_block(rec: dict[str, Any]) -> str:
    server = rec["id"].split(".", 1)[1]
    lines = [f"Job Id: {rec['id']}", f"    Job_Name = {rec['name']}", f"    Job_Owner = {rec['user']}@{server}",
             f"    job_state = {rec['state']}", f"    queue = {rec['queue']}", f"    server = {server}"]  # fmt: skip
    if rec.get("account"):
        lines.append(f"    Account_Name = {rec['account']}")
    lines.append(f"    ctime = {_ctime(rec['submit_time'])}")
    if rec.get("start_time"):
        lines.append(f"    exec_host = {'+'.join(f'{h}/0' for h in rec['hosts'])}")
    lines += [f"    Resource_List.{k} = {v}" for k, v in sorted(rec["resources"].items())]
    if rec.get("start_time"):
        lines.append(f"    stime = {_ctime(rec['start_time'])}")
    if rec.get("exit_status") is not None:
        lines.append(f"    Exit_status = {rec['exit_status']}")
    lines.append(f"    Variable_List = PBS_O_WORKDIR={rec['cwd']},PBS_O_QUEUE={rec['queue']}")
    return "\n".join(lines) + "\n"


def qstat(args: list[str]) -> int:
    full = history = False
    ids = []
    for a in args:
        if a.startswith("-") and set(a[1:]) <= {"x", "f", "w"}:
            full |= "f" in a
            history |= "x" in a
        elif a.startswith("-"):
            raise Usage(f"qstat: this fake knows -f, -x and -w, not {a!r}")
        else:
            ids.append(a)
    d, rc, shown = state_dir(), 0, []
    if not ids:
        ids = [r["id"] for r in records(d) if r["system"] == "pbs" and (history or r["state"] not in FINAL)]
    for job_id in ids:
        rec = find(job_id, "pbs", d)
        if rec is None:
            print(f"qstat: Unknown Job Id {job_id}", file=sys.stderr)
            rc = 153
            continue
        rec = refresh(d, rec)
        if rec["state"] in FINAL and not history:
            print(f"qstat: {rec['id']} Job has finished, use -x or -H to obtain historical job information",
                  file=sys.stderr)  # fmt: skip
            rc = 35
            continue
        shown.append(rec)
    if full:
        print("\n".join(_pbs_block(r) for r in shown), end="")
    elif shown:
        print(f"{'Job id':<17} {'Name':<16} {'User':<16}  Time Use S Queue")
        print(f"{'-' * 16}  {'-' * 16} {'-' * 16}  -------- - -----")
        for r in shown:
            print(f"{r['id'][:16]:<17} {r['name'][:16]:<16} {r['user'][:16]:<16}  00:00:00 {r['state']} {r['queue']}")
    return rc


def qdel(args: list[str]) -> int:
    d, rc = state_dir(), 0
    for job_id in (a for a in args if not a.startswith("-")):
        rec = find(job_id, "pbs", d)
        if rec is None:
            print(f"qdel: Unknown Job Id {job_id}", file=sys.stderr)
            rc = 153
        elif refresh(d, rec)["state"] in FINAL:
            print(f"qdel: Job has finished {rec['id']}", file=sys.stderr)
            rc = 35
        else:
            cancel(d, rec)
    return rc


def pbs_release_nodes(args: list[str]) -> int:
    """``pbs_release_nodes -j <job id> <vnode> ...`` (the ``-a``/``-k`` forms are not faked)."""
    if len(args) < 3 or args[0] != "-j":
        raise Usage("usage: pbs_release_nodes -j <job ID> <vnode> [<vnode> ...]")
    d = state_dir()
    rec = find(args[1], "pbs", d)
    if rec is None:
        print(f"pbs_release_nodes: Unknown Job Id {args[1]}", file=sys.stderr)
        return 153
    release(d, rec, args[2:], "pbs_release_nodes")
    return 0


COMMANDS = {"qsub": qsub, "qstat": qstat, "qdel": qdel, "pbs_release_nodes": pbs_release_nodes}
