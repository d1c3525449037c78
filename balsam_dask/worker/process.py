"""The one subprocess helper: apps, isolated Python functions and MPI launches use it.
(Design notes: docs/ARCHITECTURE.md, worker/process.py.)
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balsam_dask import validate
from balsam_dask.errors import InvalidSpec
from balsam_dask.private import private_dir
from balsam_dask.worker import guard, proctree
from balsam_dask.worker.programs import resolve_executable

TAIL_BYTES = 4096
TAIL_LINES = 40
DEFAULT_GRACE = 0.5
#: Longest sleep between two checks of the process and the kill event.
MAX_POLL = 0.05

_HAS_WAITID = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")
_DEVNULL: int | None = None
_DEVNULL_LOCK = threading.Lock()
#: How output files are opened: created or truncated, readable for the tails, not inherited.
_OUTPUT_FLAGS = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


@dataclass(frozen=True)
class ProcessResult:
    """How one run ended. Times are epoch seconds; ``duration`` is monotonic seconds."""

    returncode: int
    started_at: float
    ended_at: float
    duration: float
    timed_out: bool
    killed: bool
    stdout_path: Path
    stderr_path: Path
    stdout_tail: str
    stderr_tail: str
    pid: int = 0

    @property
    def ok(self) -> bool:
        """True when the command ran to completion and exited with 0."""
        return self.returncode == 0 and not self.timed_out and not self.killed


def run_process(
    argv: Sequence[str],
    *,
    workdir: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stdout_name: str = "stdout.txt",
    stderr_name: str = "stderr.txt",
    kill_event: threading.Event | None = None,
    on_start: Callable[[int], None] | None = None,
    grace: float = DEFAULT_GRACE,
    unset: Sequence[str] = (),
) -> ProcessResult:
    """Run ``argv`` in ``workdir`` (created if needed, mode 0700) and wait for it.

    ``env`` is merged over ``os.environ``, without the variables named in ``unset``.
    ``timeout`` (seconds) and ``kill_event`` stop the whole process group (SIGTERM,
    then SIGKILL after ``grace`` seconds).
    ``on_start(pid)`` is called once the process runs; the pid is also its process
    group id. An executable that cannot be found raises
    :class:`~balsam_dask.errors.InvalidSpec` before anything is created or started.
    """
    args = _check_argv(argv)
    timeout = validate.seconds("timeout", timeout, "timeout=60")
    grace_s = validate.seconds("grace", grace, "grace=0.5", allow_zero=True) or 0.0
    for name, value in (("stdout_name", stdout_name), ("stderr_name", stderr_name)):
        if not isinstance(value, str) or not value or os.sep in value or value in (".", ".."):
            raise InvalidSpec(f"{name}={value!r} is invalid: give a file name such as 'stdout.txt'")
    wd = Path(os.fspath(workdir))
    full_env = _merged_env(env, unset)
    path_var = os.environ.get("PATH", os.defpath) if full_env is None else full_env.get("PATH", os.defpath)
    found = resolve_executable(args[0], wd, path_var)
    # a program found on PATH is started by its absolute path (the child does not search PATH
    # again); a path with a slash stays relative to the workdir, as Popen's cwd= makes it
    executable = found if "/" not in args[0] and os.path.isabs(found) else None

    private_dir(wd)  # created readable by its owner only; an existing one is left as it is
    stdout_path = wd / stdout_name
    stderr_path = wd / stderr_name
    # kept open until the end: the tails are read from them (an empty file costs one fstat)
    out = os.open(stdout_path, _OUTPUT_FLAGS, 0o666)
    err = out
    try:
        if stderr_name != stdout_name:
            err = os.open(stderr_path, _OUTPUT_FLAGS, 0o666)
        started_at = time.time()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                args,
                executable=executable,  # found once here; the child does not search PATH again
                cwd=wd,
                env=full_env,
                stdin=_devnull(),
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            # The program vanished or is not runnable (e.g. a script without "#!"); other
            # errors (out of file descriptors, processes, memory) are not the spec's fault.
            if isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError)) or (
                exc.errno == errno.ENOEXEC
            ):
                raise InvalidSpec(f"cannot start {args[0]!r} in {wd}: {exc}") from None
            raise
        returncode, timed_out, killed = _supervise(proc, t0, timeout, kill_event, on_start, grace_s)
        ended_at = time.time()
        duration = time.monotonic() - t0
        stdout_tail = _fd_tail(out)
        stderr_tail = stdout_tail if err == out else _fd_tail(err)
    finally:
        os.close(out)
        if err != out:
            os.close(err)
    return ProcessResult(
        returncode=returncode,
        started_at=started_at,
        ended_at=ended_at,
        duration=duration,
        timed_out=timed_out,
        killed=killed,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        stdout_tail=stdout_tail,
        stderr_tail=stderr_tail,
        pid=proc.pid,
    )


def _supervise(proc: subprocess.Popen[bytes], t0: float, timeout: float | None, kill_event: threading.Event | None,
               on_start: Callable[[int], None] | None, grace_s: float) -> tuple[int, bool, bool]:  # fmt: skip
    """Watch the started ``proc`` to its end; returns ``(returncode, timed_out, killed)``."""
    timed_out = killed = False
    guard.watch(proc.pid, grace_s)  # stopped with its group if this process dies meanwhile
    try:
        if on_start is not None:
            on_start(proc.pid)
        timed_out, killed = _wait(proc, t0, timeout, kill_event)
        if timed_out or killed:
            kill_process_group(proc.pid, grace_s, root=proc.pid)
        else:
            # exited by itself: reap it, then stop what it left behind in its group. Checking
            # the group is one signal; scanning /proc for descendants on every normal exit cost
            # more than a short MPI launch (benchmarks/mpi_launch.py).
            proc.wait()
            if proctree.signal_group(proc.pid, 0):
                kill_process_group(proc.pid, grace_s)
        returncode = proc.wait()
    except BaseException:
        kill_process_group(proc.pid, grace_s, root=proc.pid)
        proc.wait()
        raise
    finally:
        guard.unwatch(proc.pid)
    return returncode, timed_out, killed


def kill_process_group(pgid: int, grace: float = DEFAULT_GRACE, *, root: int | None = None) -> bool:
    """Stop every process of group ``pgid``: SIGTERM, then SIGKILL after ``grace`` s.

    With ``root``, the live descendants of process ``root`` are stopped too, even those
    that left the group (MPICH's Hydra starts its proxies and ranks in sessions of their
    own). Returns True when SIGKILL was needed. Waits (boundedly) until no target is
    left alive; zombies awaiting their parent do not count. Reaps nothing.
    """
    if not proctree.have_proc():  # no /proc: the group is all we can see
        return _kill_group_only(pgid, grace)
    return proctree.stop([pgid], {} if root is None else {root: None}, grace)


def read_tail(path: str | os.PathLike[str], max_bytes: int = TAIL_BYTES, max_lines: int = TAIL_LINES) -> str:
    """The last lines of a text file (at most ``max_bytes``/``max_lines``), "" if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return _fd_tail(fd, max_bytes, max_lines)
    finally:
        os.close(fd)


def _fd_tail(fd: int, max_bytes: int = TAIL_BYTES, max_lines: int = TAIL_LINES) -> str:
    """:func:`read_tail` of an open file."""
    try:
        size = os.fstat(fd).st_size
        if not size:
            return ""
        data = os.pread(fd, min(size, max_bytes), max(0, size - max_bytes))
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and len(lines) > 1:
        lines = lines[1:]  # the first line was cut
    return "\n".join(lines[-max_lines:])


# -- helpers ---------------------------------------------------------------------------


def _check_argv(argv: Any) -> list[str]:
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        raise InvalidSpec(
            f"argv={argv!r} is invalid: give a list of strings such as ['./sim', '--n', '4'] "
            "(render a template string with balsam_dask.template.render)"
        )
    args = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in argv]
    if not args or not all(isinstance(a, str) for a in args) or not args[0]:
        raise InvalidSpec(
            f"argv={list(argv)!r} is invalid: give a non-empty list of strings such as ['./sim', '--n', '4']"
        )
    return args


def _merged_env(env: Mapping[str, str] | None, unset: Sequence[str] = ()) -> dict[str, str] | None:
    """``env`` over ``os.environ`` without ``unset``; None when that is ``os.environ`` itself (a
    task's thread-pool variables usually hold the worker's values): the child then inherits
    it, with no copy and no encoding of every variable per launch."""
    if env is not None and not isinstance(env, Mapping):
        raise InvalidSpec(f"env={env!r} is invalid: give a dict, e.g. env={{'OMP_NUM_THREADS': '2'}}")
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not key or "=" in key or not isinstance(value, str):
            raise InvalidSpec(
                f"env entry {key!r}={value!r} is invalid: names and values must be strings, "
                "e.g. env={'OMP_NUM_THREADS': '2'}"
            )
    environ = os.environ
    if all(environ.get(k) == v for k, v in (env or {}).items()) and not any(n in environ for n in unset):
        return None
    merged = dict(environ)
    merged.update(env or {})
    for name in unset:
        merged.pop(name, None)
    return merged


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, without reaping it (it stays a zombie)."""
    if proc.returncode is not None:
        return True
    if _HAS_WAITID:
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None
    return proc.poll() is not None


def _wait(
    proc: subprocess.Popen[bytes],
    t0: float,
    timeout: float | None,
    kill_event: threading.Event | None,
) -> tuple[bool, bool]:
    """Wait for exit, timeout or kill; returns ``(timed_out, killed)``."""
    if timeout is None and kill_event is None and _HAS_WAITID:
        try:  # nothing to watch but the child: block until it exits
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        return False, False
    pidfd = _pidfd(proc.pid)
    if pidfd is not None:
        try:  # readable as soon as the child exits: no polling delay on short commands
            while not _exited(proc):
                if kill_event is not None and kill_event.is_set():
                    return False, True
                step = MAX_POLL
                if timeout is not None:
                    remaining = t0 + timeout - time.monotonic()
                    if remaining <= 0:
                        return True, False
                    step = min(step, remaining)
                select.select([pidfd], [], [], step)
            return False, False
        finally:
            os.close(pidfd)
    delay = 0.001
    while not _exited(proc):
        if kill_event is not None and kill_event.is_set():
            return False, True
        step = min(delay, MAX_POLL)
        if timeout is not None:
            remaining = t0 + timeout - time.monotonic()
            if remaining <= 0:
                return True, False
            step = min(step, remaining)
        if kill_event is not None:
            kill_event.wait(step)
        else:
            time.sleep(step)
        delay *= 2
    return False, False


def _devnull() -> int:
    """A descriptor of /dev/null for the children's stdin, opened once per process."""
    global _DEVNULL
    if _DEVNULL is None:
        with _DEVNULL_LOCK:
            if _DEVNULL is None:
                _DEVNULL = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _DEVNULL


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when ``pid`` exits (Linux >= 5.3)."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return int(os.pidfd_open(pid))
    except OSError:
        return None


def _kill_group_only(pgid: int, grace: float) -> bool:
    if not proctree.signal_group(pgid, signal.SIGTERM):
        return False
    deadline = time.monotonic() + grace
    while proctree.signal_group(pgid, 0):  # zombies count here: we cannot tell them apart
        if time.monotonic() >= deadline:
            proctree.signal_group(pgid, signal.SIGKILL)
            return True
        time.sleep(0.01)
    return False
