"""An owner process for tests/worker/test_guard.py, as a worker process would be.

    python -m tests.worker.guard_owner WORKDIR

Starts its guard with a process group of its own, then processes whose pids it records in
WORKDIR (``<name>.pid``, each written whole):

- ``forked``: a forked copy of the owner (it holds the guard's pipe open; in the owner's group);
- ``popen``: a process the owner's own code starts (in the owner's group);
- ``app``: a task process started by ``run_process`` (a group of its own) in a thread, which
  starts ``detached``, a child in a session of its own that ignores SIGTERM, and ``middle``,
  a child that starts ``orphan`` in a session of its own and exits after 3 s (``orphan``
  is then no descendant of anything the owner knows).

Prints ``READY <guard pid>`` once all run. Then, for each line on stdin: ``app2`` runs another
task process (``app2.pid``) and prints ``READY <guard pid>`` again, once a new guard replaced
the one the test killed; ``stop`` closes the guard
(``guard.stop()``) and prints ``STOPPED``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from balsam_dask.worker import guard
from balsam_dask.worker.process import run_process

RECORD = "echo $$ > {0}.pid.tmp && mv {0}.pid.tmp {0}.pid && exec sleep 300"
APP = f"""
import os, subprocess, sys, time
subprocess.Popen(['sh', '-c', "trap '' TERM; " + {RECORD.format("detached")!r}.replace('exec ', '')],
                 start_new_session=True)
middle = (
    "import subprocess, time\\n"
    "subprocess.Popen(['sh', '-c', {RECORD.format("orphan")!r}], start_new_session=True)\\n"
    "time.sleep(3)\\n"
)
subprocess.Popen([sys.executable, '-c', middle])
open('app.pid.tmp', 'w').write(str(os.getpid()))
os.replace('app.pid.tmp', 'app.pid')
time.sleep(300)
"""


def record(path: Path, pid: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(pid))
    tmp.replace(path)


def wait_for(paths: list[Path]) -> None:
    deadline = time.time() + 60
    while not all(p.exists() for p in paths):
        if time.time() > deadline:
            raise SystemExit(f"not all of {paths} appeared")
        time.sleep(0.02)


def replaced(old: int | None) -> int | None:
    """The guard's pid once it is another than ``old`` (or after 60 s): the task thread tells the
    guard about its process (and replaces a dead guard) after the process started, so its pid
    file can appear first."""
    deadline = time.time() + 60
    while guard.guard_pid() in (None, old) and time.time() < deadline:
        time.sleep(0.02)
    return guard.guard_pid()


def run_in_thread(argv: list[str], workdir: Path) -> None:
    threading.Thread(target=run_process, args=(argv,), kwargs={"workdir": workdir}, daemon=True).start()


def main(workdir: Path) -> None:
    os.chdir(workdir)
    guard.start(own_group=True)
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked copy only sleeps
        time.sleep(300)
        os._exit(0)
    record(workdir / "forked.pid", child)
    subprocess.Popen(["sh", "-c", RECORD.format("popen")])
    run_in_thread([sys.executable, "-c", APP], workdir)
    wait_for([workdir / f"{n}.pid" for n in ("popen", "app", "detached", "orphan")])
    ready = guard.guard_pid()
    print("READY", ready, flush=True)
    for line in sys.stdin:
        if line.strip() == "app2":
            run_in_thread(["sh", "-c", RECORD.format("app2")], workdir)
            wait_for([workdir / "app2.pid"])
            ready = replaced(ready)
            print("READY", ready, flush=True)
        elif line.strip() == "stop":
            guard.stop()
            print("STOPPED", flush=True)
    time.sleep(300)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
