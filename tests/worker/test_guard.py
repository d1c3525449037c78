"""The guard process against real processes: what a process started dies with it.

The owner (tests/worker/guard_owner.py) stands in for a worker process; the test kills
it, its guard or both, and checks by pid (zombies count as gone) what is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_dask.worker import proctree

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the guard reads /proc")

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("forked", "popen", "app", "detached", "orphan")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def in_dir(path: Path) -> list[int]:
    """The processes working in ``path`` (the owner and everything it started)."""
    found = []
    for pid in proctree.scan():
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(path):
                found.append(pid)
        except OSError:
            pass
    return found


def still_running(pids: dict[str, int], within: float) -> dict[str, int]:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {n: p for n, p in pids.items() if alive(p)}


class Owner:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.worker.guard_owner", str(workdir)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.seen: list[int] = [self.proc.pid]

    def ready(self) -> int:
        """Waits for the next READY line; the guard's pid."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), f"the owner said {line!r}"
        guard = int(line.split()[1])
        self.seen.append(guard)
        return guard

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def pids(self, *names: str) -> dict[str, int]:
        found = {n: int((self.workdir / f"{n}.pid").read_text()) for n in names}
        self.seen.extend(found.values())
        return found

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[Owner]:
    o = Owner(tmp_path)
    try:
        yield o
    finally:
        o.kill()
        for pid in o.seen + in_dir(tmp_path):  # what a failed assertion left running
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def wait_until_orphaned(o: Owner) -> None:
    """Until the orphan's parent has exited: it is no descendant of the app any more."""
    orphan = o.pids("orphan")["orphan"]
    middle = proctree.scan()[orphan][0]
    deadline = time.monotonic() + 10
    while alive(middle) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(middle)


def test_everything_dies_with_a_sigkilled_owner(owner: Owner) -> None:
    guard = owner.ready()
    pids = owner.pids(*NAMES)
    wait_until_orphaned(owner)
    assert all(alive(p) for p in pids.values())
    t0 = time.monotonic()
    owner.kill()
    # "detached" ignores SIGTERM: SIGKILLed after the grace period (0.5 s)
    assert not still_running({**pids, "guard": guard}, within=5), "processes outlived their owner"
    assert time.monotonic() - t0 < 4


def test_a_killed_guard_is_replaced_and_told_what_runs(owner: Owner) -> None:
    first = owner.ready()
    os.kill(first, signal.SIGKILL)
    assert not still_running({"guard": first}, within=5)
    owner.send("app2")  # the next task process finds the guard gone and starts another
    second = owner.ready()
    assert second != first
    pids = owner.pids(*NAMES, "app2")
    owner.kill()
    left = still_running(pids, within=5)
    # the first guard's record of the orphan went with it; everything else is stopped
    assert set(left) <= {"orphan"}, f"{left} outlived their owner"


def test_closing_the_guard_spares_the_owner_and_its_group(owner: Owner) -> None:
    guard = owner.ready()
    pids = owner.pids(*NAMES)
    owner.send("stop")
    assert owner.proc.stdout is not None and owner.proc.stdout.readline().strip() == "STOPPED"
    assert not still_running({"guard": guard}, within=5)
    left = still_running({n: pids[n] for n in ("app", "detached")}, within=5)
    assert not left, f"{left} outlived the guard that watched them"
    assert alive(owner.proc.pid) and alive(pids["popen"]) and alive(pids["forked"])
