"""A guard process per worker: no process a task started outlives the worker that owns it.
(Design notes: docs/ARCHITECTURE.md, worker/guard.py.)
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from balsam_dask.worker import proctree

log = logging.getLogger(__name__)

#: A watched process's tree is first recorded at this age (seconds), then at doubling intervals.
REFRESH = 0.25
#: The longest interval between two records of a watched process's tree (seconds).
MAX_REFRESH = 8.0
#: Record the trees at most this fraction of the time (a /proc scan takes longer on busy nodes).
REFRESH_SHARE = 0.05
#: Seconds the guard waits after reading, so that messages arrive in batches (writes to a
#: pipe nobody waits on wake nobody; what is unread when the owner dies is read then).
BATCH_WAIT = 0.1
#: Grace period (seconds) when no watched process named one.
DEFAULT_GRACE = 0.5
#: Without a pidfd, how often the guard checks that its owner runs.
OWNER_POLL = 0.5
#: How long the guard waits, after the pipe closed, to see its owner exit.
OWNER_WAIT = 2.0


# ---------------------------------------------------------------- the worker's side


@dataclass
class _Link:
    proc: subprocess.Popen[bytes]
    fd: int
    owner: int


_link: _Link | None = None
_lock = threading.Lock()
_group = 0  # this process's own group, made by start(own_group=True)
_live: dict[int, bytes] = {}  # watched pid -> its message, sent again to a new guard
_warned = False


def start(own_group: bool = False) -> None:
    """Start this process's guard, if it has none yet.

    ``own_group=True`` first makes this process the leader of a process group of its own
    (unless it leads one or a session already), stopped by the guard once this process has
    exited: for worker processes a Nanny started, not for a user's own process.
    """
    global _group
    if not proctree.have_proc():
        return
    with _lock:
        pid = os.getpid()
        if own_group and _group != pid and os.getpgrp() != pid and os.getsid(0) != pid:
            try:
                os.setpgid(0, 0)
            except OSError:
                pass
            else:
                _group = pid
                if _link is not None and _link.owner == pid:
                    _write(_link, b"g %d\n" % pid)
        _ensure()


def watch(pid: int, grace: float = DEFAULT_GRACE) -> None:
    """Have the guard stop process ``pid`` (a child of this process leading its own group),
    its group and its descendants if this process dies; ``grace``: seconds between SIGTERM
    and SIGKILL."""
    if not proctree.have_proc():
        return
    start_ = proctree.start_time(pid)  # an unreaped child: still ours, even if it has exited
    if start_ is None:
        return
    line = b"+ %d %s %.3f\n" % (pid, start_, grace)
    if _link is None or _link.owner != os.getpid():
        with _lock:
            _ensure()
    _live[pid] = line
    _send(line)


def unwatch(pid: int) -> None:
    """The caller has dealt with process ``pid`` (and its group): the guard forgets it."""
    if _live.pop(pid, None) is not None:
        _send(b"- %d\n" % pid)


def stop() -> None:
    """Close this process's guard: it stops what is still watched and exits."""
    global _link
    with _lock:
        link, _link = _link, None
        _live.clear()
    if link is not None and link.owner == os.getpid():
        _write(link, b"q\n")  # this process goes on: its group is not the guard's to stop
        os.close(link.fd)
        try:
            link.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            link.proc.kill()
            link.proc.wait()


def guard_pid() -> int | None:
    """The pid of this process's guard, if it runs."""
    link = _link
    return link.proc.pid if link is not None and link.owner == os.getpid() else None


def _send(line: bytes) -> None:
    link = _link
    if link is None or link.owner != os.getpid():
        with _lock:
            link = _ensure()
    if link is not None and not _write(link, line):
        with _lock:  # the guard is gone (killed?): a new one learns what runs
            if _link is link:
                _discard(link)
            _ensure()


def _write(link: _Link, line: bytes) -> bool:
    """Send ``line``; False if the guard is gone."""
    try:
        os.write(link.fd, line)  # shorter than PIPE_BUF: atomic among the worker's threads
    except BlockingIOError:
        pass  # the pipe is full (the guard is stopped?): this message is lost, the task runs on
    except OSError:
        return False
    return True


def _discard(link: _Link) -> None:
    global _link
    _link = None
    try:
        os.close(link.fd)
    except OSError:
        pass
    link.proc.poll()  # reap it


def _ensure() -> _Link | None:
    """This process's guard, started if needed (call with ``_lock`` held)."""
    global _link, _warned
    pid = os.getpid()
    if _link is not None and _link.owner == pid:
        return _link
    if _link is not None:  # inherited through fork: the parent's guard, not ours
        _link = None
        _live.clear()
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__, str(pid)],
            stdin=r, stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    except OSError as e:
        os.close(w)
        if not _warned:
            _warned = True
            log.warning("balsam_dask: no guard process (%s): task processes may outlive this worker", e)
        return None
    finally:
        os.close(r)
    os.set_blocking(w, False)  # a guard that falls behind never stalls a task
    link = _Link(proc, w, pid)
    if _group == pid:  # made by this process, not inherited through fork
        _write(link, b"g %d\n" % _group)
    for line in list(_live.values()):
        _write(link, line)
    _link = link
    return link


# ---------------------------------------------------------------- the guard process


@dataclass
class _Leader:
    """A watched process (the leader of its own group), as the guard knows it."""

    start: bytes  # its start time, to tell it from a later process with the same pid
    grace: float
    due: float  # when to record its group and descendants next (monotonic seconds)
    interval: float = 0.0  # since the last record


class _Watch:
    """What a guard knows: watched group leaders and the processes recorded under them."""

    def __init__(self) -> None:
        self.leaders: dict[int, _Leader] = {}
        self.known: dict[int, bytes] = {}  # pid -> start time of processes seen under them
        self.owner_group = 0
        self.quit = False  # the owner closed the guard and goes on
        self.buf = b""

    def read(self, fd: int) -> bool:
        """Handle the messages ``fd`` has; False at the end of file or when told to quit
        (a forked copy of the owner may hold the pipe open)."""
        data = os.read(fd, 65536)
        *lines, self.buf = (self.buf + data).split(b"\n")
        for line in lines:
            self.handle(line)
        return bool(data) and not self.quit

    def drain(self, fd: int) -> None:
        """Handle every message ``fd`` still holds, without waiting for more."""
        os.set_blocking(fd, False)
        try:
            while self.read(fd):
                pass
        except BlockingIOError:
            pass

    def handle(self, line: bytes) -> None:
        parts = line.split()
        if len(parts) == 4 and parts[0] == b"+":
            self.leaders[int(parts[1])] = _Leader(parts[2], float(parts[3]), time.monotonic() + REFRESH, REFRESH)
        elif len(parts) == 2 and parts[0] == b"-":
            self.leaders.pop(int(parts[1]), None)
        elif len(parts) == 2 and parts[0] == b"g":
            self.owner_group = int(parts[1])
        elif parts == [b"q"]:
            self.quit = True

    def next_due(self) -> float | None:
        return min((x.due for x in self.leaders.values()), default=None)

    def record(self) -> None:
        """Record the live members of the leaders' groups and their descendants. A leader's
        tree is recorded 0.25 s after it started, then at doubling intervals up to MAX_REFRESH
        (trees grow as a task starts, mpiexec its proxies and ranks): a task that ends within
        0.25 s costs no scan, a long one little."""
        t0 = time.monotonic()
        table = proctree.scan()
        held = {p: x.start for p, x in self.leaders.items() if p in table and table[p][3] == x.start}
        known = {p: s for p, s in self.known.items() if p in table and table[p][3] == s}
        proctree.collect(table, held, {**known, **held}, known)
        self.known = known
        now = time.monotonic()
        floor = (now - t0) / REFRESH_SHARE  # where a scan is slow, scan less often
        for x in self.leaders.values():
            if x.due <= now:
                x.interval = min(max(2 * x.interval, floor), MAX_REFRESH)
                x.due = now + x.interval

    def stop_all(self, owner_exited: bool) -> None:
        """Stop the leaders' groups (those whose leader's pid is still theirs), their
        descendants, every recorded process, and the owner's group once the owner has exited."""
        held = {p: x.start for p, x in self.leaders.items() if proctree.start_time(p) == x.start}
        groups = list(held)
        if self.owner_group and owner_exited:
            groups.append(self.owner_group)
        grace = max((x.grace for x in self.leaders.values()), default=DEFAULT_GRACE)
        proctree.stop(groups, {**self.known, **held}, grace, targets=dict(self.known))


def _pidfd(pid: int) -> int | None:
    try:
        return int(os.pidfd_open(pid)) if hasattr(os, "pidfd_open") else None
    except OSError:
        return None


def _await_exit(pid: int, pidfd: int | None, within: float) -> bool:
    """Whether process ``pid`` (the guard's parent) has exited, waiting up to ``within`` s: the
    pipe's end of file comes as the owner exits, a moment before it has."""
    deadline = time.monotonic() + within
    while True:
        if pidfd is not None:
            if select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return True
        elif os.getppid() != pid:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def serve(owner: int, fd: int = 0) -> None:
    """The guard's loop: read messages from ``fd`` until ``owner`` exits or the pipe closes,
    then stop what is watched."""
    state = _Watch()
    pidfd = _pidfd(owner)
    fds = [fd] if pidfd is None else [fd, pidfd]
    try:
        while not (pidfd is None and os.getppid() != owner):
            due = state.next_due()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            if pidfd is None:
                timeout = OWNER_POLL if timeout is None else min(timeout, OWNER_POLL)
            ready = select.select(fds, [], [], timeout)[0]
            if pidfd is not None and pidfd in ready:
                break
            if fd in ready:
                if not state.read(fd):
                    break
                time.sleep(BATCH_WAIT)
            due = state.next_due()
            if due is not None and time.monotonic() >= due:
                state.record()
    finally:
        state.drain(fd)  # what the owner wrote before it died
        state.stop_all(not state.quit and _await_exit(owner, pidfd, OWNER_WAIT))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m balsam_dask.worker.guard OWNER_PID  (messages on stdin)", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # it ends with its owner, and stops what the owner started
    serve(int(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
