"""Process groups and process trees as Linux's /proc shows them, and stopping them.

Used by the process runner (a task's processes on timeout, kill or exit) and by the guard
(a dead worker's task processes). A process is recorded as its pid with its start time
(field 22 of ``/proc/<pid>/stat``), so a pid the kernel reused for an unrelated process is
never signalled; zombies awaiting their parent count as gone. Standard library only.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

PROC = Path("/proc")
#: States of a process that has exited (a zombie awaiting its parent, or dead).
DEAD = (b"Z", b"X", b"x")
#: How long to wait for SIGKILLed processes to disappear before giving up.
KILL_WAIT = 2.0

#: pid -> (parent pid, process group, state, start time)
Table = dict[int, tuple[int, int, bytes, bytes]]


def have_proc() -> bool:
    """Whether /proc can show process trees (Linux)."""
    return PROC.is_dir()


def _fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if there is no such process."""
    try:  # os.open/os.read: half the cost of open() (this runs once per task process)
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # "pid (comm) state ppid pgrp session ... starttime(22nd) ...": comm may hold spaces and
    # parentheses, so split after its last ")"
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields if len(fields) > 19 else None


def start_time(pid: int) -> bytes | None:
    """When ``pid`` started (clock ticks since boot, as /proc writes it), None if it is gone."""
    fields = _fields(pid)
    return None if fields is None else fields[19]


def scan() -> Table:
    """Every process: pid -> (ppid, pgrp, state, start time)."""
    table: Table = {}
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            pid = int(entry.name)
            fields = _fields(pid)
            if fields is not None:
                table[pid] = (int(fields[1]), int(fields[2]), fields[0], fields[19])
    return table


def alive_as_recorded(pid: int, start: bytes) -> bool:
    """True while ``pid`` runs and is still the process recorded (not a reused pid)."""
    fields = _fields(pid)
    return fields is not None and fields[19] == start and fields[0] not in DEAD


def collect(table: Table, pgids: Iterable[int], roots: Mapping[int, bytes | None], targets: dict[int, bytes]) -> None:
    """Add to ``targets`` the live members of groups ``pgids`` and the live descendants of
    ``roots`` (pid -> start time; None trusts the pid: an unreaped child of the caller)."""
    groups = set(pgids)
    children: dict[int, list[int]] = {}
    for pid, (ppid, pgrp, state, start) in table.items():
        children.setdefault(ppid, []).append(pid)
        if pgrp in groups and state not in DEAD:
            targets.setdefault(pid, start)
    stack = [c for r, s in roots.items() if s is None or (r in table and table[r][3] == s) for c in children.get(r, ())]
    while stack:
        pid = stack.pop()
        _ppid, _pgrp, state, start = table[pid]
        if state not in DEAD:
            targets.setdefault(pid, start)
        stack.extend(children.get(pid, ()))


def prune(targets: dict[int, bytes]) -> bool:
    """Drop targets that are gone; True if any is left."""
    for pid, start in list(targets.items()):
        if not alive_as_recorded(pid, start):
            del targets[pid]
    return bool(targets)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to group ``pgid``; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_all(pgids: Iterable[int], targets: dict[int, bytes], sig: int) -> None:
    for pgid in pgids:
        signal_group(pgid, sig)
    for pid, start in targets.items():
        if alive_as_recorded(pid, start):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop(
    pgids: Iterable[int], roots: Mapping[int, bytes | None], grace: float, targets: dict[int, bytes] | None = None
) -> bool:
    """Stop groups ``pgids``, the descendants of ``roots`` (see :func:`collect`) and ``targets``
    (pid -> start time): SIGTERM, then SIGKILL after ``grace`` seconds to those left.

    Children started meanwhile are found and stopped too. Returns True when SIGKILL was
    needed; waits (boundedly) until no target is left alive. Reaps nothing.
    """
    groups = list(pgids)
    found = {} if targets is None else {p: s for p, s in targets.items() if alive_as_recorded(p, s)}
    collect(scan(), groups, roots, found)
    live_groups = [g for g in groups if signal_group(g, 0)]
    if not found and not live_groups:
        return False
    _signal_all(live_groups, found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        collect(scan(), groups, roots, found)  # children started meanwhile
        if not prune(found):
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(0.01, remaining))
    _signal_all(live_groups, found, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT
    while prune(found) and time.monotonic() < deadline:
        time.sleep(0.005)
    return True
