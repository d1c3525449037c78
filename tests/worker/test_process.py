"""The process runner against real processes. Every process a test starts is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_dask.errors import InvalidSpec
from balsam_dask.worker import programs
from balsam_dask.worker.process import (
    ProcessResult,
    kill_process_group,
    read_tail,
    run_process,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the runner tests read /proc")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def wait_dead(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids a test learned about; whatever is still alive at the end is killed."""
    found: list[int] = []
    yield found
    for pid in found:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_pid(path: Path, within: float = 5.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return int(text)
        time.sleep(0.01)
    raise AssertionError(f"{path} was never written")


def test_output_capture_and_return_code(tmp_path: Path) -> None:
    res = run_process(["sh", "-c", "echo out; echo err >&2; exit 3"], workdir=tmp_path)
    assert isinstance(res, ProcessResult)
    assert res.returncode == 3
    assert not res.ok and not res.timed_out and not res.killed
    assert res.stdout_path == tmp_path / "stdout.txt"
    assert res.stderr_path == tmp_path / "stderr.txt"
    assert res.stdout_path.read_text() == "out\n"
    assert res.stderr_path.read_text() == "err\n"
    assert (res.stdout_tail, res.stderr_tail) == ("out", "err")
    assert res.started_at <= res.ended_at
    assert 0 <= res.duration < 5
    assert res.pid > 0


def test_success(tmp_path: Path) -> None:
    res = run_process([sys.executable, "-c", "print('hi')"], workdir=tmp_path)
    assert res.returncode == 0
    assert res.ok
    assert res.stdout_tail == "hi"


def test_signal_death_is_negative_return_code(tmp_path: Path) -> None:
    res = run_process(["sh", "-c", "kill -9 $$"], workdir=tmp_path)
    assert res.returncode == -signal.SIGKILL
    assert not res.timed_out and not res.killed


def test_custom_file_names_and_merged_streams(tmp_path: Path) -> None:
    res = run_process(
        ["sh", "-c", "echo one; echo two >&2"],
        workdir=tmp_path,
        stdout_name="out.log",
        stderr_name="out.log",
    )
    assert res.stdout_path == res.stderr_path == tmp_path / "out.log"
    assert sorted(res.stdout_path.read_text().split()) == ["one", "two"]


def test_workdir_is_created(tmp_path: Path) -> None:
    workdir = tmp_path / "a" / "b" / "c"
    res = run_process(["sh", "-c", "pwd"], workdir=str(workdir))
    assert workdir.is_dir()
    assert res.stdout_tail == str(workdir.resolve())


def test_env_is_merged_over_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_TEST_INHERITED", "from-parent")
    res = run_process(
        ["sh", "-c", 'echo "$FOO|$BALSAM_TEST_INHERITED|$OMP_NUM_THREADS"'],
        workdir=tmp_path,
        env={"FOO": "bar baz", "OMP_NUM_THREADS": "3"},
    )
    assert res.stdout_tail == "bar baz|from-parent|3"


def test_env_equal_to_the_workers_and_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Overrides that equal os.environ's values (the child inherits it as it is), and names to unset."""
    monkeypatch.setenv("BALSAM_TEST_SAME", "same")
    monkeypatch.setenv("BALSAM_TEST_GONE", "here")
    script = 'echo "$BALSAM_TEST_SAME|${BALSAM_TEST_GONE-unset}"'
    res = run_process(["sh", "-c", script], workdir=tmp_path / "a", env={"BALSAM_TEST_SAME": "same"})
    assert res.stdout_tail == "same|here"
    res = run_process(["sh", "-c", script], workdir=tmp_path / "b", env={"BALSAM_TEST_SAME": "same"},
                      unset=["BALSAM_TEST_GONE", "BALSAM_TEST_NEVER_SET"])  # fmt: skip
    assert res.stdout_tail == "same|unset"
    res = run_process(["sh", "-c", script], workdir=tmp_path / "c", unset=["BALSAM_TEST_NEVER_SET"])
    assert res.stdout_tail == "same|here"


def test_tails_are_of_what_the_process_wrote(tmp_path: Path) -> None:
    """The tails come from the files as the process left them, even if it renamed them away."""
    res = run_process(["sh", "-c", "echo kept; echo gone >&2; mv stderr.txt moved.txt"], workdir=tmp_path)
    assert (res.stdout_tail, res.stderr_tail) == ("kept", "gone")
    assert not res.stderr_path.exists() and (tmp_path / "moved.txt").read_text() == "gone\n"
    again = run_process(["true"], workdir=tmp_path)  # the files are truncated for the next run
    assert (again.stdout_tail, again.stderr_tail) == ("", "")
    assert res.stdout_path.read_text() == ""


def test_timeout_kills_the_whole_group(tmp_path: Path, pids: list[int]) -> None:
    started: list[int] = []
    t0 = time.monotonic()
    res = run_process(
        ["sh", "-c", "sleep 100 & echo $! > grandchild.pid; sleep 100"],
        workdir=tmp_path,
        timeout=0.5,
        on_start=started.append,
    )
    elapsed = time.monotonic() - t0
    grandchild = read_pid(tmp_path / "grandchild.pid")
    pids.append(grandchild)
    assert res.timed_out and not res.killed and not res.ok
    assert res.returncode == -signal.SIGTERM
    assert 0.5 <= elapsed < 3
    assert started == [res.pid]
    assert wait_dead(grandchild), "the grandchild outlived the timeout"
    assert not alive(res.pid)


def test_timeout_stops_descendants_in_their_own_session(tmp_path: Path, pids: list[int]) -> None:
    # Like Hydra's proxies and ranks: a child that moved to a session of its own.
    script = (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sh', '-c', 'trap \"\" TERM; exec sleep 100'], start_new_session=True)\n"
        "open('gc.pid', 'w').write(str(p.pid))\n"
        "time.sleep(100)\n"
    )
    res = run_process([sys.executable, "-c", script], workdir=tmp_path, timeout=1.0, grace=0.2)
    grandchild = read_pid(tmp_path / "gc.pid")
    pids.append(grandchild)
    assert res.timed_out
    assert wait_dead(grandchild), "a descendant outside the group outlived the timeout"


def test_sigterm_ignored_escalates_to_sigkill(tmp_path: Path, pids: list[int]) -> None:
    t0 = time.monotonic()
    res = run_process(
        ["sh", "-c", "trap '' TERM; sleep 100 & echo $! > gc.pid; sleep 100"],
        workdir=tmp_path,
        timeout=0.3,
        grace=0.3,
    )
    elapsed = time.monotonic() - t0
    grandchild = read_pid(tmp_path / "gc.pid")
    pids.append(grandchild)
    assert res.timed_out
    assert res.returncode == -signal.SIGKILL
    assert 0.6 <= elapsed < 3
    assert wait_dead(grandchild)


def test_kill_event_stops_within_a_second(tmp_path: Path, pids: list[int]) -> None:
    event = threading.Event()
    started = threading.Event()
    results: list[ProcessResult] = []

    def on_start(pid: int) -> None:
        pids.append(pid)
        assert os.getpgid(pid) == pid  # its own process group
        started.set()

    def target() -> None:
        results.append(
            run_process(
                ["sh", "-c", "sleep 100 & echo $! > gc.pid; sleep 100"],
                workdir=tmp_path,
                kill_event=event,
                on_start=on_start,
            )
        )

    thread = threading.Thread(target=target)
    thread.start()
    try:
        assert started.wait(5)
        grandchild = read_pid(tmp_path / "gc.pid")
        pids.append(grandchild)
        t0 = time.monotonic()
        event.set()
        thread.join(5)
        stopped_after = time.monotonic() - t0
    finally:
        event.set()
        thread.join(10)
    assert not thread.is_alive()
    (res,) = results
    assert res.killed and not res.timed_out
    assert res.returncode == -signal.SIGTERM
    assert stopped_after < 1.0
    assert wait_dead(grandchild)


def test_kill_event_already_set(tmp_path: Path) -> None:
    event = threading.Event()
    event.set()
    res = run_process(["sleep", "100"], workdir=tmp_path, kill_event=event)
    assert res.killed
    assert res.duration < 2


def test_leftover_processes_are_stopped_after_exit(tmp_path: Path, pids: list[int]) -> None:
    res = run_process(["sh", "-c", "sleep 100 & echo $! > gc.pid"], workdir=tmp_path)
    grandchild = read_pid(tmp_path / "gc.pid")
    pids.append(grandchild)
    assert res.returncode == 0 and res.ok
    assert res.duration < 3
    assert wait_dead(grandchild)


def test_on_start_error_stops_the_process(tmp_path: Path, pids: list[int]) -> None:
    seen: list[int] = []

    def on_start(pid: int) -> None:
        seen.append(pid)
        pids.append(pid)
        raise RuntimeError("bookkeeping failed")

    with pytest.raises(RuntimeError, match="bookkeeping failed"):
        run_process(["sleep", "100"], workdir=tmp_path, on_start=on_start)
    assert wait_dead(seen[0])


def test_missing_executable(tmp_path: Path) -> None:
    workdir = tmp_path / "never"
    with pytest.raises(InvalidSpec, match=r"executable 'no-such-program-xyz' not found on PATH=.*absolute path"):
        run_process(["no-such-program-xyz", "--flag"], workdir=workdir)
    with pytest.raises(InvalidSpec, match=r"executable './sim' does not exist \(looked for .*never/sim\)"):
        run_process(["./sim"], workdir=workdir)
    assert not workdir.exists(), "nothing is created when the program is missing"
    assert isinstance(InvalidSpec("x"), ValueError)


def test_executable_lookup_uses_given_path_and_workdir(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "mytool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    res = run_process(["mytool"], workdir=tmp_path / "w", env={"PATH": f"{bindir}:{os.defpath}"})
    assert res.stdout_tail == "tool ran"
    res = run_process(["../bin/mytool"], workdir=tmp_path / "w")
    assert res.stdout_tail == "tool ran"
    noshebang = bindir / "noshebang"
    noshebang.write_bytes(b"\x7fELF not really")
    noshebang.chmod(0o755)
    with pytest.raises(InvalidSpec, match=r"cannot start .*noshebang.*Exec format error"):
        run_process([str(noshebang)], workdir=tmp_path)
    plain = bindir / "plain"
    plain.write_text("not a program")
    with pytest.raises(InvalidSpec, match=r"is not executable \(chmod \+x"):
        run_process([str(plain)], workdir=tmp_path)


def test_a_program_found_on_path_is_looked_up_again_once_it_is_gone(tmp_path: Path) -> None:
    dirs = [tmp_path / "bin1", tmp_path / "bin2"]
    for i, d in enumerate(dirs, 1):
        d.mkdir()
        (d / "tool").write_text(f"#!/bin/sh\necho tool {i}\n")
        (d / "tool").chmod(0o755)
    env = {"PATH": f"{dirs[0]}:{dirs[1]}:{os.defpath}"}
    assert run_process(["tool"], workdir=tmp_path / "w", env=env).stdout_tail == "tool 1"
    assert run_process(["tool"], workdir=tmp_path / "w", env=env).stdout_tail == "tool 1"  # as found before
    (dirs[0] / "tool").chmod(0o644)  # no longer a program: searched again
    assert run_process(["tool"], workdir=tmp_path / "w", env=env).stdout_tail == "tool 2"
    (dirs[1] / "tool").unlink()
    with pytest.raises(InvalidSpec, match=r"executable 'tool' not found on PATH="):
        run_process(["tool"], workdir=tmp_path / "w", env=env)


def test_a_program_added_earlier_on_path_is_found_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a fresh search would: the directories before the remembered one are watched (their
    modification times); a relative directory before it is never remembered past."""
    first, second = tmp_path / "bin0", tmp_path / "bin1"
    for d in (first, second):
        d.mkdir()

    def tool(d: Path, text: str) -> None:
        (d / "tool").write_text(f"#!/bin/sh\necho {text}\n")
        (d / "tool").chmod(0o755)

    tool(second, "later")
    env = {"PATH": f"{first}:{second}:{os.defpath}"}
    assert run_process(["tool"], workdir=tmp_path / "w", env=env).stdout_tail == "later"
    tool(first, "earlier")  # installed while the worker runs: used once its directory is looked at again
    monkeypatch.setattr(programs, "RECHECK", 0.0)
    assert run_process(["tool"], workdir=tmp_path / "w", env=env).stdout_tail == "earlier"
    relative = {"PATH": f"bin:{second}:{os.defpath}"}  # bin/ of each task's own directory
    assert run_process(["tool"], workdir=tmp_path / "a", env=relative).stdout_tail == "later"
    (tmp_path / "b" / "bin").mkdir(parents=True)
    tool(tmp_path / "b" / "bin", "its own")
    assert run_process(["tool"], workdir=tmp_path / "b", env=relative).stdout_tail == "its own"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"argv": "echo hi"}, r"argv='echo hi' is invalid: give a list of strings"),
        ({"argv": []}, r"give a non-empty list of strings"),
        ({"argv": ["echo", 3]}, r"give a non-empty list of strings"),
        ({"argv": ["echo"], "timeout": 0}, r"timeout=0 is invalid: give a number of seconds > 0"),
        ({"argv": ["echo"], "timeout": float("nan")}, r"timeout=nan is invalid"),
        ({"argv": ["echo"], "timeout": True}, r"timeout=True is invalid"),
        ({"argv": ["echo"], "grace": -1}, r"grace=-1 is invalid: give a number of seconds >= 0"),
        ({"argv": ["echo"], "env": {"A": 1}}, r"env entry 'A'=1 is invalid"),
        ({"argv": ["echo"], "stdout_name": "a/b"}, r"stdout_name='a/b' is invalid"),
    ],
)
def test_argument_errors(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    argv = kwargs.pop("argv")
    with pytest.raises(InvalidSpec, match=match):
        run_process(argv, workdir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_tails_keep_the_last_lines(tmp_path: Path) -> None:
    res = run_process(
        [
            sys.executable,
            "-c",
            "import sys\nfor i in range(100): print(i)\nsys.stderr.buffer.write(b'bad \\xff byte')",
        ],
        workdir=tmp_path,
    )
    lines = res.stdout_tail.splitlines()
    assert len(lines) == 40
    assert lines[-1] == "99" and lines[0] == "60"
    assert res.stderr_tail == "bad \ufffd byte"


def test_read_tail_cuts_bytes(tmp_path: Path) -> None:
    f = tmp_path / "big.txt"
    f.write_text("".join(f"line {i:05d} {'x' * 100}\n" for i in range(1000)))
    tail = read_tail(f)
    assert len(tail.encode()) <= 4096
    assert tail.splitlines()[-1].startswith("line 00999")
    assert all(line.startswith("line ") for line in tail.splitlines())  # no cut line
    assert read_tail(tmp_path / "missing.txt") == ""


def test_kill_process_group_helper(pids: list[int]) -> None:
    proc = subprocess.Popen(["sleep", "100"], start_new_session=True)
    pids.append(proc.pid)
    try:
        assert kill_process_group(proc.pid, grace=0.5) is False  # SIGTERM was enough
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGTERM
    assert kill_process_group(proc.pid, grace=0.1) is False  # nothing left: no error


def test_kill_process_group_escalates(pids: list[int]) -> None:
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 100"], start_new_session=True)
    pids.append(proc.pid)
    try:
        time.sleep(0.1)  # let the shell install its trap
        assert kill_process_group(proc.pid, grace=0.2) is True
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
