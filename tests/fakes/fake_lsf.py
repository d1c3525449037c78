"""The fake LSF's commands: ``bsub`` (script on stdin), ``bjobs``, ``bkill``, ``blaunch`` (see ``fakebatch``)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

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


def bsub(args: list[str]) -> int:
    takes = {"-J", "-n", "-R", "-W", "-q", "-P", "-o", "-e", "-gpu", "-G", "-M", "-app", "-cwd", "-u", "-env"}
    if args and not args[-1].startswith("-") and (len(args) == 1 or args[-2] not in takes):
        raise Usage("bsub: this fake reads the job script on standard input: bsub [options] < script")
    script = sys.stdin.read()
    o = parse_options(directives(script, "#BSUB") + args, takes, {"-x", "-K", "-B", "-N", "-I"}, "bsub")
    slots = int(o.get("-n", ["1"])[-1])
    ptile = slots
    for req in o.get("-R", []):
        if "ptile=" in req:
            ptile = int(req.split("ptile=", 1)[1].split("]", 1)[0].split(",", 1)[0])
    name = o.get("-J", ["NONAME"])[-1]
    opts = {"name": name, "nodes": -(-slots // ptile), "slots": slots, "ptile": ptile,
            "walltime": seconds(o.get("-W", ["60"])[-1], minutes=True), "queue": o.get("-q", ["normal"])[-1],
            "account": o.get("-P", [None])[-1], "out": o.get("-o", [None])[-1],
            "err": o.get("-e", [None])[-1], "app": o.get("-app", [None])[-1]}  # fmt: skip
    rec = submit("lsf", script, opts, "bsub")
    default = "" if "-q" in o else "default "
    print(f"Job <{rec['id']}> is submitted to {default}queue <{rec['queue']}>.")
    return 0


BJOBS_FIELDS = {
    "jobid": lambda r: r["id"], "id": lambda r: r["id"], "stat": lambda r: r["state"],
    "job_name": lambda r: r["name"], "name": lambda r: r["name"], "queue": lambda r: r["queue"],
    "user": lambda r: r["user"], "exit_code": lambda r: "-" if r.get("exit_status") is None else r["exit_status"],
    "exit_reason": lambda r: r.get("reason") or "-", "exec_host": lambda r: ":".join(r["hosts"]),
}  # fmt: skip


def bjobs(args: list[str]) -> int:
    header, all_jobs = True, False
    fields = ["jobid", "user", "stat", "queue", "exec_host", "job_name"]
    ids, it = [], iter(args)
    for a in it:
        if a == "-noheader":
            header = False
        elif a == "-a":
            all_jobs = True
        elif a == "-w":
            pass
        elif a == "-o":
            spec = next(it, "")
            fields = [f.split(":", 1)[0].lower() for f in shlex.split(spec) if not f.startswith("delimiter=")]
            bad = [f for f in fields if f not in BJOBS_FIELDS]
            if bad or not fields:
                raise Usage(
                    f"bjobs: {' '.join(bad) or spec!r}: Illegal field (this fake knows {', '.join(BJOBS_FIELDS)})"
                )
        elif a.startswith("-"):
            raise Usage(f"bjobs: this fake knows -noheader, -a, -w and -o, not {a!r}")
        else:
            ids.append(a)
    d, rc, shown = state_dir(), 0, []
    if not ids:
        ids = [r["id"] for r in records(d) if r["system"] == "lsf" and (all_jobs or r["state"] not in FINAL)]
    for job_id in ids:
        rec = find(job_id, "lsf", d)
        if rec is None:
            print(f"Job <{job_id}> is not found", file=sys.stderr)
            rc = 255
            continue
        shown.append(refresh(d, rec))
    if header and shown:
        print(" ".join(f.upper() for f in fields))
    for r in shown:
        print(" ".join(str(BJOBS_FIELDS[f](r)) for f in fields))
    return rc


def bkill(args: list[str]) -> int:
    d, rc = state_dir(), 0
    for job_id in (a for a in args if not a.startswith("-")):
        rec = find(job_id, "lsf", d)
        if rec is None:
            print(f"Job <{job_id}>: No matching job found", file=sys.stderr)
            rc = 255
        elif refresh(d, rec)["state"] in FINAL:
            print(f"Job <{rec['id']}>: Job has already finished", file=sys.stderr)
            rc = 255
        else:
            cancel(d, rec)
            print(f"Job <{rec['id']}> is being terminated")
    return rc


def blaunch(args: list[str]) -> int:
    job_id = os.environ.get("LSB_JOBID")
    rec = find(job_id, "lsf") if job_id else None
    if rec is None or rec["state"] != "RUN":
        raise Usage(f"blaunch: not inside a running LSF job (LSB_JOBID={job_id!r})")
    hosts: list[str] = []
    it = iter(args)
    for a in it:
        if a in ("-n", "-use-login-shell", "-no-shell"):
            continue
        if a == "-z":
            hosts = next(it, "").split()
        elif a == "-u":
            hosts = Path(next(it, "")).read_text().split()
        elif not hosts:
            hosts = [a]
        else:
            cmd = [a, *it]
            break
    else:
        raise Usage("usage: blaunch [-n] [-z 'host ...' | -u host_file | host] command [argument ...]")
    stray = [h for h in hosts if h not in rec["hosts"]]
    if stray:
        raise Usage(f"blaunch: host(s) {', '.join(stray)} not allocated to job <{job_id}> (it has {rec['hosts']})")
    procs = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL) for _ in hosts]

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return max(p.wait() for p in procs)


def bresize(args: list[str]) -> int:
    """``bresize release "<host> ..." <job ID>`` (other subcommands are not faked). As on a
    real site, only a resizable job can shrink: here one submitted with an application
    profile (``bsub -app <profile>``, the profile standing for one with RESIZABLE_JOBS=Y)."""
    if len(args) != 3 or args[0] != "release":
        raise Usage('usage: bresize release "host_name ..." job_ID')
    d = state_dir()
    rec = find(args[2], "lsf", d)
    if rec is None:
        print(f"Job <{args[2]}>: No matching job found", file=sys.stderr)
        return 255
    if not rec.get("app"):
        raise Usage(f"Job <{rec['id']}>: The job is not resizable (submit it with -app <a resizable profile>)")
    release(d, rec, args[1].split(), "bresize")
    print(f"Job <{rec['id']}>: resize request is accepted")
    return 0


COMMANDS = {"bsub": bsub, "bjobs": bjobs, "bkill": bkill, "blaunch": blaunch, "bresize": bresize}
