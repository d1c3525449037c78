"""The balsam-dask CLI: happy paths in-process, bad input through the real entry point."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from balsam_dask.cli import main
from balsam_dask.spec import Resources, TaskSpec
from balsam_dask.store import AllocationWrite, Store, Transition
from balsam_dask.store.schema import HEAD

BIN = str(Path(sys.executable).parent / "balsam-dask")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60, env=env)


def _fill(store_url: str) -> tuple[str, list[int]]:
    s = Store(store_url)
    ids = s.create_tasks(
        [TaskSpec(name=f"fit-{i}", tags={"exp": "sweep"}) for i in range(3)]
        + [TaskSpec(kind="mpi", name="sim", resources=Resources(nodes=2, ranks_per_node=4), tags={"exp": "sim"})]
    )
    s.apply(
        [
            Transition(s.new_id(), ids[0], "CREATED", "READY", time.time()),
            Transition(s.new_id(), ids[0], "READY", "RUNNING", time.time(), worker="tcp://n1:1", message="go"),
        ]
    )
    s.close()
    return store_url, ids


@pytest.fixture
def filled(store_url: str) -> tuple[str, list[int]]:
    return _fill(store_url)


@pytest.fixture
def sqlite_filled(tmp_path: Path) -> tuple[str, list[int]]:
    return _fill(f"sqlite:///{tmp_path}/cli.db")


def test_init_ls_show_summary(filled: tuple[str, list[int]], capsys: pytest.CaptureFixture[str]) -> None:
    url, ids = filled
    assert main(["--store", url, "init"]) == 0
    assert f"is ready (schema revision {HEAD})" in capsys.readouterr().out

    assert main(["--store", url, "ls"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["ID", "NAME", "KIND", "STATE"]
    assert len(out) == 5 and "sim" in out[4] and "mpi" in out[4]

    assert main(["--store", url, "ls", "--state", "RUNNING"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and str(ids[0]) in out[1] and "fit-0" in out[1]

    assert main(["--store", url, "ls", "--tag", "exp=sim"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2

    assert main(["--store", url, "ls", "--name", "fit-*", "--limit", "2"]) == 0
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 3 and f"--after {ids[1]}" in cap.err

    assert main(["--store", url, "show", str(ids[0])]) == 0
    out = capsys.readouterr().out
    assert "state=RUNNING" in out and "CREATED" in out and "tcp://n1:1" in out and "go" in out

    assert main(["--store", url, "summary"]) == 0
    out = capsys.readouterr().out
    assert "RUNNING  1" in out and "CREATED  3" in out and "total    4" in out


def test_store_from_environment(filled: tuple[str, list[int]]) -> None:
    url, _ = filled
    r = run_cli("summary", env={**os.environ, "BALSAM_DASK_STORE": url})
    assert r.returncode == 0 and "total" in r.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--store", "mysql://x/y", "ls"], 1, "uses 'mysql', which is not supported; use sqlite:///"),
        (
            ["--store", "postgresql://u@127.0.0.1:1/db", "ls"],
            1,
            "cannot reach the store at postgresql://u@127.0.0.1:1/db",
        ),
        (["ls", "--tag", "exp"], 2, "tag 'exp' is malformed; use --tag name=value"),
        (["ls", "--tag", "bad key=1"], 1, "tag name 'bad key' is invalid"),
        (["ls", "--state", "DONE"], 1, "state 'DONE' is unknown; use one of: CREATED"),
        (["ls", "--since", "yesterday"], 2, "time 'yesterday' is malformed"),
        (["ls", "--limit", "0"], 2, "--limit 0 must be positive"),
        (["ls", "--watch", "0"], 2, "'0' is not a number of seconds > 0; e.g. --watch 2"),
        (["ls", "--watch", "soon"], 2, "'soon' is not a number of seconds > 0"),
        (["show", "abc"], 2, "task id 'abc' is not an integer"),
        (["show", "424242"], 1, "no task with id 424242"),
        (["kill"], 1, "kill needs task ids or --tag"),
        (["allocations", "--state", "DONE"], 2, "invalid choice: 'DONE' (choose from 'PENDING', 'QUEUED'"),
    ],
)
def test_bad_input(sqlite_filled: tuple[str, list[int]], args: list[str], code: int, message: str) -> None:
    url, _ = sqlite_filled
    full = args if args[0] == "--store" else ["--store", url, *args]
    r = run_cli(*full)
    assert r.returncode == code, r
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_store_is_not_created(tmp_path: Path) -> None:
    target = tmp_path / "nothing.db"
    r = run_cli("--store", str(target), "ls")
    assert r.returncode == 1 and "there is no store at" in r.stderr and "balsam-dask init" in r.stderr
    assert not target.exists()


def test_newer_schema_cli(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "new.db"
    Store(str(db)).close()
    with sqlite3.connect(db) as c:
        c.execute("UPDATE alembic_version SET version_num='9999'")
    r = run_cli("--store", str(db), "summary")
    assert r.returncode == 1 and "written by a newer balsam_dask" in r.stderr and "Traceback" not in r.stderr


def test_allocations_lists_jobs_and_released_nodes(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    s = Store(store_url)
    t0 = time.time()
    jobs = [s.new_id(), s.new_id()]
    new = {"submitted_at": t0, "info": {}, "walltime": 600.0}
    s.apply([AllocationWrite(jobs[0], {**new, "state": "PENDING", "system": "slurm", "nodes": 3}),
             AllocationWrite(jobs[1], {**new, "state": "SUBMIT_FAILED", "system": "pbs", "nodes": 2,
                                       "message": "qsub: bad queue\nmore"})])  # fmt: skip
    released = {"released": [{"worker": "j-2", "host": "n3", "at": t0 + 9}]}
    s.apply([AllocationWrite(jobs[0], {"state": "RUNNING", "scheduler_id": "4242", "started_at": t0 + 5,
                                       "message": "released 1 idle node(s) (n3); 2 left",
                                       "info": released})])  # fmt: skip
    s.close()
    assert main(["--store", store_url, "allocations"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:7] == ["ID", "SYSTEM", "JOB", "ID", "NODES", "RELEASED", "STATE"]
    assert out[1].split()[:6] == [str(jobs[0]), "slurm", "4242", "3", "1", "RUNNING"] and out[1].endswith("2 left")
    assert out[2].split()[:6] == [str(jobs[1]), "pbs", "-", "2", "0", "SUBMIT_FAILED"]
    assert out[2].endswith("qsub: bad queue")
    assert main(["--store", store_url, "allocations", "--state", "SUBMIT_FAILED"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_kill_marks_tasks(filled: tuple[str, list[int]]) -> None:
    url, ids = filled
    r = run_cli("--store", url, "kill", "--tag", "exp=sweep")
    assert r.returncode == 0 and "kill requested for 3" in r.stdout
    s = Store(url)
    assert sorted(s.kill_requests()) == sorted(ids[:3])
    s.close()


def test_never_a_traceback(sqlite_filled: tuple[str, list[int]], tmp_path: Path) -> None:
    """Errors before the store opens, from the database after it opened, and out-of-range ids."""
    import sqlite3

    url, ids = sqlite_filled
    r = run_cli("--store", "bogus://x", "ls")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("balsam-dask: error: store URL 'bogus://x' uses 'bogus', which is not supported")
    r = run_cli("--store", url, "show", "99999999999999999999999")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "task id '99999999999999999999999' is out of range: ids are 1 to 9223372036854775807" in r.stderr
    broken = tmp_path / "broken.db"
    broken.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    with sqlite3.connect(broken) as conn:
        conn.execute("DROP TABLE events")
    r = run_cli("--store", f"sqlite:///{broken}", "show", str(ids[0]))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("balsam-dask: error: the store's database failed: no such table: events")
    assert len(r.stderr.splitlines()) == 1


READ_COMMANDS = [["ls"], ["summary"], ["allocations"]]


def _check_reads(run: Callable[..., subprocess.CompletedProcess[str]], ids: list[int]) -> None:
    for args in [*READ_COMMANDS, ["show", str(ids[0])]]:
        r = run(*args)
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)
    assert len(run("ls").stdout.splitlines()) == 5
    assert f"task {ids[0]}" in run("show", str(ids[0])).stdout


def _check_writes_refused(run: Callable[..., subprocess.CompletedProcess[str]], db: Path) -> None:
    for args in (["kill", "--tag", "exp=sweep"], ["init"]):
        r = run(*args)
        lines = r.stderr.splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert lines[0].startswith(f"balsam-dask: error: cannot write the store sqlite:///{db}: the store file {db} "
                                   "is not writable (mode 0")  # fmt: skip


@pytest.mark.slow
def test_a_read_only_copy_is_read_and_never_written(sqlite_filled: tuple[str, list[int]], tmp_path: Path) -> None:
    """Root may write any file: a store whose file and directory are marked read-only is still
    opened read-only, leaves nothing behind, and writing commands refuse it."""
    url, ids = sqlite_filled
    copy = tmp_path / "copy"
    copy.mkdir()
    db = copy / "cli.db"
    shutil.copy(make_url(url).database or "", db)
    os.chmod(db, 0o444)
    os.chmod(copy, 0o555)
    try:
        before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
        run = partial(run_cli, "--store", str(db))
        _check_reads(run, ids)
        _check_writes_refused(run, db)
        assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before
    finally:
        os.chmod(copy, 0o755)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.slow
def test_another_user_reads_a_store_it_cannot_write(sqlite_filled: tuple[str, list[int]]) -> None:
    """User nobody, a world-readable store in a directory it cannot write: the read commands
    work (with no scheduler, and with one writing), writing commands refuse in one line."""
    url, ids = sqlite_filled
    shared = Path(tempfile.mkdtemp(prefix="balsam-shared-", dir="/tmp"))
    try:
        os.chmod(shared, 0o755)
        db = shared / "cli.db"
        shutil.copy(make_url(url).database or "", db)
        os.chmod(db, 0o644)
        nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN, "--store", str(db)]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*nobody, *args], capture_output=True, text=True, timeout=60, cwd=shared)

        _check_reads(run, ids)
        _check_writes_refused(run, db)
        with Store(str(db)) as live:  # its owner writes meanwhile: the change is seen (its -wal is readable)
            (new,) = live.create_tasks([TaskSpec(name="while-running")])
            assert Path(f"{db}-wal").exists()
            r = run("show", str(new))
            assert r.returncode == 0 and "while-running" in r.stdout, r.stderr
        assert sorted(p.name for p in shared.iterdir()) == ["cli.db"]  # nothing left behind
    finally:
        shutil.rmtree(shared)


def test_ls_watch_lists_again_until_ctrl_c(sqlite_filled: tuple[str, list[int]]) -> None:
    """``ls --watch`` lists every SECONDS, a change included, until SIGINT: exit 0, no traceback."""
    url, ids = sqlite_filled
    p = subprocess.Popen([BIN, "--store", url, "ls", "--watch", "0.2", "--tag", "exp=sweep"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout is not None
        lines: list[str] = []
        while sum(line.startswith("every 0.2s: ") for line in lines) < 2:
            line = p.stdout.readline()
            assert line, f"ls --watch ended: {lines} {p.stderr.read() if p.stderr else ''}"
            lines.append(line)
        with Store(url) as s:  # a change the next listing shows
            s.apply([Transition(s.new_id(), ids[1], "CREATED", "READY", time.time())])
        while not any(f"{ids[1]}  fit-1" in line and "READY" in line for line in lines):
            line = p.stdout.readline()
            assert line, lines
            lines.append(line)
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    listing = "".join(lines) + out
    assert "ID" in listing and "fit-0" in listing and "sim" not in listing
