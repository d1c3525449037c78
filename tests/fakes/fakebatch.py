"""A fake PBS (qsub, qstat, qdel, pbs_release_nodes) and LSF (bsub, bjobs, bkill, blaunch, bresize)
backed by local processes.

The executables in ``tests/fakes/pbs`` and ``tests/fakes/lsf`` run this module as
``fakebatch.py <command> <args>``. Put one of those directories first on PATH and the real
submission code (``PBSEnsembleCluster``/``LSFEnsembleCluster``) drives it end to end.

- Submission reads the script's directives (``#PBS``/``#BSUB`` lines before the first
  command, then the command line's options), copies the script into the state directory
  (``$BALSAM_FAKE_BATCH_DIR``, default ``/tmp/balsam-fake-batch-<uid>``), writes the job's
  record and starts a detached *supervisor* (``setsid``) that plays the execution daemon:
  after ``$BALSAM_FAKE_QUEUE_DELAY`` seconds (default 0) in the queue it runs the script in
  a session of its own, with the environment the real system gives (PBS: ``PBS_JOBID``,
  ``PBS_NODEFILE``, ``PBS_O_WORKDIR``..., started in ``$HOME``; LSF: ``LSB_JOBID``,
  ``LSB_HOSTS``, ``LSB_MCPU_HOSTS``..., started in the submission directory), the rest of
  the submitter's environment passed through as with ``qsub -V``.
- The job's nodes are distinct names of this machine (``localhost``, ``127.0.0.1``, the
  host name, its addresses): MPICH's Hydra treats each as a separate node.
- The supervisor is a child subreaper, so every process of the job stays its descendant
  (Hydra starts proxies in sessions of their own); at the walltime, on qdel/bkill and when
  the script ends it stops them all (SIGTERM, then SIGKILL after
  ``$BALSAM_FAKE_KILL_DELAY`` seconds, default 2) and records the outcome as the real
  system reports it (PBS: state F with ``Exit_status`` -29 at the walltime, 256+signal
  when killed; LSF: DONE or EXIT).
- Status commands check that each running job's supervisor is alive (``/proc/<pid>/stat``,
  zombies counting as dead: PID 1 here does not reap) and fail the job if not.
- ``$BALSAM_FAKE_FAIL`` set makes submission fail: the value is the error message.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_ENV = "BALSAM_FAKE_BATCH_DIR"
FAIL_ENV = "BALSAM_FAKE_FAIL"
QUEUE_DELAY_ENV = "BALSAM_FAKE_QUEUE_DELAY"
KILL_DELAY_ENV = "BALSAM_FAKE_KILL_DELAY"
PBS_EXIT_WALLTIME = -29  # PBS Pro's JOB_EXEC_KILL_WALLTIME
PBS_EXIT_LOST = -1  # JOB_EXEC_FAIL1
FINAL = {"F", "DONE", "EXIT"}


class Usage(Exception):
    """A command-line error: printed on stderr, exit status 2."""


# --------------------------------------------------------------------------- state
def state_dir() -> Path:
    d = Path(os.environ.get(STATE_ENV) or f"/tmp/balsam-fake-batch-{os.getuid()}")
    (d / "jobs").mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    with open(d / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _save(d: Path, rec: dict[str, Any]) -> None:
    path = d / "jobs" / f"{rec['seq']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)


def records(d: Path | None = None) -> list[dict[str, Any]]:
    d = d or state_dir()
    out = []
    for p in sorted((d / "jobs").glob("*.json"), key=lambda p: int(p.stem)):
        with contextlib.suppress(ValueError, OSError):
            out.append(json.loads(p.read_text()))
    return out


def find(job_id: str, system: str, d: Path | None = None) -> dict[str, Any] | None:
    """The record of ``job_id`` (``12``, ``12.server``)."""
    seq = job_id.split(".", 1)[0].split("[", 1)[0]
    for rec in records(d):
        if rec["system"] == system and (rec["id"] == job_id or str(rec["seq"]) == seq):
            return rec
    return None


def update(d: Path, seq: int, **fields: Any) -> dict[str, Any]:
    with _locked(d):
        rec: dict[str, Any] = json.loads((d / "jobs" / f"{seq}.json").read_text())
        if rec["state"] in FINAL and "state" in fields:  # the first outcome stands
            fields = {k: v for k, v in fields.items() if k not in ("state", "exit_status", "reason", "end_time")}
        rec.update(fields)
        _save(d, rec)
        return rec


# --------------------------------------------------------------------------- processes
def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent pid, start time in ticks) from /proc, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def alive(pid: int | None, start: int | None = None) -> bool:
    """Running (not a zombie), and the same process if its start time is given."""
    st = proc_stat(pid) if pid else None
    return st is not None and st[0] not in "ZX" and (start is None or st[2] == start)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, sig)


def stop_tree(root: int, grace: float, include_root: bool = False) -> None:
    """SIGTERM every live descendant of ``root`` (and ``root``), SIGKILL what is left after ``grace``."""
    targets = [p for p in [*descendants(root), *([root] if include_root else [])] if alive(p)]
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        targets = [p for p in [*descendants(root), *([root] if include_root else [])] if alive(p)]
        if not targets:
            return
        time.sleep(0.05)
    while targets:
        _signal(targets, signal.SIGKILL)
        time.sleep(0.05)
        _reap()
        targets = [p for p in [*descendants(root), *([root] if include_root else [])] if alive(p)]


#: Exit codes (negative: killed by that signal) of the children this process reaped.
EXITED: dict[int, int] = {}


def _reap() -> None:
    """Reap every exited child of this process into :data:`EXITED`."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        EXITED[pid] = os.waitstatus_to_exitcode(status)


def kill_all(d: Path | None = None) -> None:
    """Stop every process of every job recorded in ``d`` (for test teardown), by pid."""
    for rec in records(d):
        for key in ("sup", "job"):
            pid = rec.get(f"{key}_pid")
            if pid and alive(pid, rec.get(f"{key}_start")):
                stop_tree(pid, 0.5, include_root=True)


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def local_hosts() -> list[str]:
    names = ["localhost", "127.0.0.1", socket.gethostname()]
    with contextlib.suppress(OSError):
        names.append(socket.gethostbyname(socket.gethostname()))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
        names += [a for a in out.split() if ":" not in a]
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- submission
def directives(script: str, prefix: str) -> list[str]:
    """The words of the ``prefix`` lines before the script's first command."""
    words: list[str] = []
    for line in script.splitlines():
        s = line.strip()
        if s.startswith(prefix + " "):
            words += shlex.split(s[len(prefix) :])
        elif s and not s.startswith("#"):
            break
    return words


def parse_options(words: list[str], takes_value: set[str], flags: set[str], cmd: str) -> dict[str, list[str]]:
    opts: dict[str, list[str]] = {}
    it = iter(words)
    for w in it:
        if w in flags:
            opts.setdefault(w, []).append("")
        elif w in takes_value:
            value = next(it, None)
            if value is None:
                raise Usage(f"{cmd}: option {w} needs a value")
            opts.setdefault(w, []).append(value)
        else:
            raise Usage(f"{cmd}: invalid option {w!r}")
    return opts


def seconds(text: str, minutes: bool = False) -> float:
    """``[[HH:]MM:]SS`` (PBS), or ``[HH:]MM`` with ``minutes`` (LSF)."""
    parts = [float(p) for p in text.split(":")]
    if minutes:
        parts.append(0.0)
    total = 0.0
    for p in parts:
        total = total * 60 + p
    return total


def submit(system: str, script: str, opts: dict[str, Any], cmd: str) -> dict[str, Any]:
    """Record a job and start its supervisor; returns the record."""
    if os.environ.get(FAIL_ENV):
        raise Usage(f"{cmd}: {os.environ[FAIL_ENV]}")
    hosts = local_hosts()
    if opts["nodes"] > len(hosts):
        raise Usage(
            f"{cmd}: job asks for {opts['nodes']} nodes; this fake {system} has {len(hosts)} ({', '.join(hosts)})"
        )
    d = state_dir()
    with _locked(d):  # the supervisor waits for this lock before it reads the record
        counter = d / "counter"
        seq = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(seq))
        job_id = f"{seq}.{socket.gethostname()}" if system == "pbs" else str(seq)
        (d / f"{seq}.sh").write_text(script)
        os.chmod(d / f"{seq}.sh", 0o755)
        with open(d / f"{seq}.supervisor.log", "ab") as log:
            sup = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve().with_name("fakecmd.py")), "_supervise", str(d), str(seq)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        st = proc_stat(sup.pid)
        rec = {"seq": seq, "id": job_id, "system": system, "state": "Q" if system == "pbs" else "PEND",
               "hosts": hosts[: opts["nodes"]], "submit_time": time.time(), "cwd": os.getcwd(), "user": _user(),
               "sup_pid": sup.pid, "sup_start": st[2] if st else None, **opts}  # fmt: skip
        _save(d, rec)
    return rec


# --------------------------------------------------------------------------- execution
PR_SET_CHILD_SUBREAPER = 36


def _job_environment(d: Path, rec: dict[str, Any]) -> tuple[dict[str, str], str, str, str | None]:
    """(environment, working directory, stdout path, stderr path or None to join) of a job."""
    env = dict(os.environ)
    seq, name, job_id, cwd = rec["seq"], rec["name"], rec["id"], rec["cwd"]
    if rec["system"] == "pbs":
        nodefile = d / f"{seq}.nodes"
        nodefile.write_text("".join(f"{h}\n" * rec["mpiprocs"] for h in rec["hosts"]))
        env.update(PBS_JOBID=job_id, PBS_JOBNAME=name, PBS_NODEFILE=str(nodefile), PBS_O_WORKDIR=cwd,
                   PBS_ENVIRONMENT="PBS_BATCH", PBS_QUEUE=rec["queue"], PBS_O_HOST=socket.gethostname(),
                   PBS_O_PATH=env.get("PATH", ""))  # fmt: skip

        def where(path: str | None, default: str, suffix: str) -> str:
            if not path:
                return os.path.join(cwd, default)
            path = os.path.join(cwd, path.split(":", 1)[-1])
            return os.path.join(path, f"{job_id}.{suffix}") if os.path.isdir(path) or path.endswith("/") else path

        out = where(rec["out"], f"{name}.o{seq}", "OU")
        err = None if rec["join"] == "oe" else where(rec["err"], f"{name}.e{seq}", "ER")
        return env, os.environ.get("HOME") or "/", out, err
    slots = [(h, min(rec["ptile"], rec["slots"] - i * rec["ptile"])) for i, h in enumerate(rec["hosts"])]
    hostfile = d / f"{seq}.hosts"
    hostfile.write_text("".join(f"{h}\n" * n for h, n in slots))
    env.update(LSB_JOBID=job_id, LSB_JOBNAME=name, LSB_QUEUE=rec["queue"], LS_SUBCWD=cwd,
               LSB_HOSTS=" ".join(" ".join([h] * n) for h, n in slots),
               LSB_MCPU_HOSTS=" ".join(f"{h} {n}" for h, n in slots),
               LSB_DJOB_HOSTFILE=str(hostfile), LSB_JOBFILENAME=str(d / f"{seq}.sh"))  # fmt: skip

    def expand(path: str) -> str:
        return os.path.join(cwd, path.replace("%J", job_id).replace("%I", "0"))

    out = expand(rec["out"]) if rec["out"] else str(d / f"{seq}.out")
    err = expand(rec["err"]) if rec["err"] and rec["err"] != rec["out"] else None
    return env, cwd, out, err


def supervise(d: Path, seq: int) -> int:
    """Run job ``seq`` as its execution daemon would (see the module's docstring)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signals: list[int] = []  # qdel/bkill send SIGTERM
    signal.signal(signal.SIGTERM, lambda signum, frame: signals.append(signum))
    path = d / "jobs" / f"{seq}.json"
    with _locked(d):
        rec = json.loads(path.read_text())
    pbs = rec["system"] == "pbs"
    kill_delay = float(os.environ.get(KILL_DELAY_ENV) or 2.0)
    queued_until = time.monotonic() + float(os.environ.get(QUEUE_DELAY_ENV) or 0.0)
    while time.monotonic() < queued_until and not signals and not json.loads(path.read_text()).get("deleted"):
        time.sleep(0.05)
    if signals or json.loads(path.read_text()).get("deleted"):
        update(d, seq, state="F" if pbs else "EXIT", end_time=time.time(), reason="deleted while queued")
        return 0
    env, cwd, out_path, err_path = _job_environment(d, rec)
    with open(out_path, "ab") as out, open(err_path or os.devnull, "ab") as err:
        job = subprocess.Popen(
            [str(d / f"{seq}.sh")], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT if err_path is None else err, start_new_session=True,
        )  # fmt: skip
    st = proc_stat(job.pid)
    update(
        d, seq, state="R" if pbs else "RUN", start_time=time.time(), job_pid=job.pid, job_start=st[2] if st else None
    )
    ends = time.monotonic() + rec["walltime"]
    outcome = "exit"
    while job.pid not in EXITED:
        if signals:
            outcome = "deleted"
            break
        if time.monotonic() >= ends:
            outcome = "walltime"
            break
        time.sleep(0.1)
        _reap()
    stop_tree(os.getpid(), kill_delay)  # what the job left behind, or all of it
    while job.pid not in EXITED:
        _reap()
        time.sleep(0.01)
    code = job.returncode = EXITED[job.pid]
    if pbs:
        status = PBS_EXIT_WALLTIME if outcome == "walltime" else code if code >= 0 else 256 - code
        update(d, seq, state="F", exit_status=status, end_time=time.time(), reason=outcome)
    else:
        reason = {"walltime": "TERM_RUNLIMIT", "deleted": "TERM_OWNER"}.get(outcome, "")
        state = "DONE" if outcome == "exit" and code == 0 else "EXIT"
        update(d, seq, state=state, exit_status=code if code >= 0 else 128 - code, end_time=time.time(), reason=reason)
    return 0


def refresh(d: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """A job whose supervisor died without recording an outcome has failed."""
    if rec["state"] not in FINAL and not alive(rec.get("sup_pid"), rec.get("sup_start")):
        pbs = rec["system"] == "pbs"
        return update(d, rec["seq"], state="F" if pbs else "EXIT", exit_status=PBS_EXIT_LOST if pbs else 255,
                      end_time=time.time(), reason="execution daemon lost")  # fmt: skip
    return rec


def cancel(d: Path, rec: dict[str, Any]) -> None:
    update(d, rec["seq"], deleted=True)
    if alive(rec.get("sup_pid"), rec.get("sup_start")):
        os.kill(rec["sup_pid"], signal.SIGTERM)
        return
    if alive(rec.get("job_pid"), rec.get("job_start")):
        stop_tree(rec["job_pid"], 1.0, include_root=True)
    refresh(d, rec)


def release(d: Path, rec: dict[str, Any], hosts: list[str], cmd: str) -> dict[str, Any]:
    """Give back some hosts of a running job, as ``pbs_release_nodes``/``bresize release`` do:
    never its first (primary) host, only hosts it has. The job's record lists what is left
    and what was released; the processes that ran "on" a host are not told apart here (every
    host is this machine), so the caller must have stopped them, as our cluster does first."""
    if refresh(d, rec)["state"] not in ("R", "RUN"):
        raise Usage(f"{cmd}: job {rec['id']} is not running (state {rec['state']})")
    if not hosts:
        raise Usage(f"{cmd}: name the hosts to release")
    unknown = [h for h in hosts if h not in rec["hosts"]]
    if unknown:
        raise Usage(f"{cmd}: {', '.join(unknown)} not part of job {rec['id']} ({', '.join(rec['hosts'])})")
    if rec["hosts"][0] in hosts:
        raise Usage(f"{cmd}: cannot release the primary execution host {rec['hosts'][0]} of job {rec['id']}")
    return update(d, rec["seq"], hosts=[h for h in rec["hosts"] if h not in hosts],
                  released=[*rec.get("released", []), *hosts])  # fmt: skip


def main(argv: list[str]) -> int:
    """Run one command (``qsub``, ``bjobs``...) with its arguments; ``_supervise`` is internal."""
    if argv[:1] == ["_supervise"]:
        return supervise(Path(argv[1]), int(argv[2]))
    from tests.fakes import fake_lsf, fake_pbs

    commands = {**fake_pbs.COMMANDS, **fake_lsf.COMMANDS}
    if not argv or argv[0] not in commands:
        print(f"fakebatch: give one of {', '.join(commands)}", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except Usage as e:
        print(str(e), file=sys.stderr)
        return 1
