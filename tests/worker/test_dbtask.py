"""Database tasks on a real cluster, submitted as ``balsam-dask serve`` does: apps, functions,
MPI, input files, staging, hooks."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import distributed
import pytest

from balsam_dask import Client, LocalEnsembleCluster
from balsam_dask.apps import AppResult
from balsam_dask.errors import FunctionLoadError, HookError, StagingError, TaskTimeout
from balsam_dask.protocol import SPEC_ANNOTATION
from balsam_dask.spec import Resources, TaskSpec
from balsam_dask.taskdb.job import DbJob, DbResult
from balsam_dask.worker import staging
from balsam_dask.worker.dbtask import run_db_task
from tests.conftest import require_or_skip

H = "tests.worker.dbtask_helpers"
Ens = tuple[LocalEnsembleCluster, Client]


def run(client: Client, job: DbJob, spec: TaskSpec, timeout: float = 120) -> DbResult:
    """Submit as serve does: a plain distributed submit of run_db_task under the spec annotation."""
    with dask.annotate(**{SPEC_ANNOTATION: spec}):
        fut = distributed.Client.submit(client, run_db_task, job, key=f"{job.name}-{job.task_id}", pure=False)
    result = fut.result(timeout=timeout)
    assert isinstance(result, DbResult)
    return result


def app(command: Any, **kw: Any) -> TaskSpec:
    return TaskSpec(kind="app", command=command, **kw)


def test_an_app_with_params(ens: Ens) -> None:
    _, client = ens
    res = run(client, DbJob(1001, "hello", params={"greeting": "hi there", "n": 3}), app("echo {greeting} {n}"))
    assert isinstance(res.value, AppResult)
    assert res.value.stdout_tail == "hi there 3"
    assert Path(res.workdir).name == "hello-1001" and Path(res.value.stdout_path).parent == Path(res.workdir)
    assert (res.transfers, res.new_tasks) == ((), ())


def test_a_function_by_import_path_in_thread_and_isolated(ens: Ens) -> None:
    _, client = ens
    res = run(client, DbJob(1002, "adder", function=f"{H}:add", args=(1, 2), params={"scale": 10}), TaskSpec())
    assert res.value == 30
    res = run(client, DbJob(1003, "where", function=f"{H}:where_am_i"), TaskSpec(isolate=True))
    assert res.value == res.workdir and Path(res.workdir).name == "where-1003"
    with pytest.raises(FunctionLoadError, match=rf"function {H}:nope cannot be imported on .*AttributeError"):
        run(client, DbJob(1004, "nope", function=f"{H}:nope"), TaskSpec())


@pytest.mark.mpi
def test_an_mpi_app_of_two_ranks(ens: Ens) -> None:
    _, client = ens
    spec = TaskSpec(kind="mpi", command="sh -c {script}", resources=Resources(nodes=2))
    res = run(client, DbJob(1005, "ranks", params={"script": "echo rank $PMI_RANK"}), spec)
    assert sorted(res.value.stdout_tail.splitlines()) == ["rank 0", "rank 1"]


def test_input_files_are_linked_or_copied_from_a_parent(ens: Ens, tmp_path: Path) -> None:
    _, client = ens
    parent = tmp_path / "parent-1"
    (parent / "out").mkdir(parents=True)
    (parent / "out" / "a.txt").write_text("A")
    (parent / "out" / "b.txt").write_text("B")
    for i, mode in enumerate(("link", "copy")):
        job = DbJob(1010 + i, f"inputs-{mode}", inputs=((1, str(parent), "out/*.txt"),), input_mode=mode)
        res = run(client, job, app("cat out/a.txt out/b.txt"))
        assert res.value.stdout_tail == "AB"
        assert (Path(res.workdir) / "out" / "a.txt").is_symlink() == (mode == "link")
    job = DbJob(1012, "inputs-none", inputs=((1, str(parent), "*.h5"),))
    with pytest.raises(StagingError, match=r"input_files: '\*.h5' matches no file of parent task 1"):
        run(client, job, app("true"))


def test_stage_in_local_file_url_and_rsync_then_stage_out(ens: Ens, tmp_path: Path) -> None:
    _, client = ens
    data = tmp_path / "data"
    (data / "dir").mkdir(parents=True)
    (data / "x.txt").write_text("xx")
    (data / "dir" / "y.txt").write_text("yyy")
    out = tmp_path / "results"
    job = DbJob(1020, "staged",
                stage_in=({"src": str(data / "x.txt"), "dest": "x.txt"},
                          {"src": f"file://{data}/x.txt", "dest": "in/x2.txt"}),
                stage_out=({"src": "*.out", "dest": f"{out}/"},))  # fmt: skip
    res = run(client, job, app("sh -c 'cat x.txt in/x2.txt > r.out; echo 1 > s.out'"))
    assert [(t.direction, t.transport, t.ok, t.attempts, t.nbytes) for t in res.transfers] == [
        ("in", "copy", True, 1, 2), ("in", "copy", True, 1, 2), ("out", "copy", True, 1, 6)]  # fmt: skip
    assert (out / "r.out").read_text() == "xxxx" and (out / "s.out").read_text() == "1\n"
    # local paths through rsync on every worker: a registered transport replaces the built-in copy
    client.run(staging.register_transport, "copy", staging.RsyncTransport())
    try:
        res = run(client, DbJob(1021, "rsynced", stage_in=({"src": str(data / "dir"), "dest": "d"},)), app("ls d"))
    finally:
        client.run(staging.register_transport, "copy", staging.CopyTransport())
    assert res.value.stdout_tail == "y.txt"
    assert [(t.transport, t.nbytes, t.dest) for t in res.transfers] == [("rsync", 3, f"{res.workdir}/d")]


@pytest.fixture
def rsync_daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real rsync daemon on loopback serving module ``data`` (its directory, writable): its
    URL and the directory. Stopped by its pid."""
    exe = shutil.which("rsync")
    if exe is None:
        require_or_skip("rsync (apt-get install -y rsync)")
    assert exe is not None
    root = tmp_path / "module"
    root.mkdir()
    conf = tmp_path / "rsyncd.conf"
    owner = "  uid = 0\n  gid = 0\n" if os.getuid() == 0 else ""  # as root it would run as nobody
    conf.write_text(f"pid file = {tmp_path}/rsyncd.pid\nuse chroot = no\n[data]\n  path = {root}\n  read only = no\n"
                    f"{owner}")  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--daemon", "--no-detach", "--address=127.0.0.1", f"--port={port}",
                             f"--config={conf}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:  # listening once it answers a module listing
            ok = subprocess.run([exe, f"rsync://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=10)
            if "data" in ok.stdout:
                break
            assert proc.poll() is None and time.monotonic() < deadline, f"rsync --daemon: {ok.stderr}"
            time.sleep(0.1)
        yield f"rsync://127.0.0.1:{port}/data", root
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_stage_in_and_out_through_an_rsync_daemon(ens: Ens, tmp_path: Path, rsync_daemon: tuple[str, Path]) -> None:
    """rsync:// locations: the files cross rsync's own protocol over TCP, both ways."""
    _, client = ens
    url, root = rsync_daemon
    (root / "inputs").mkdir()
    (root / "inputs" / "a.txt").write_text("aaaa")
    (root / "inputs" / "b.txt").write_text("bb")
    job = DbJob(1030, "over-rsync", stage_in=({"src": f"{url}/inputs", "dest": "in"},),
                stage_out=({"src": "*.out", "dest": f"{url}/results/"},))  # fmt: skip
    res = run(client, job, app("sh -c 'cat in/a.txt in/b.txt > joined.out'"))
    assert [(t.direction, t.transport, t.ok, t.nbytes) for t in res.transfers] == [
        ("in", "rsync", True, 6), ("out", "rsync", True, 6)]  # fmt: skip
    assert sorted(p.name for p in (Path(res.workdir) / "in").iterdir()) == ["a.txt", "b.txt"]
    assert (root / "results" / "joined.out").read_text() == "aaaabb"


def test_a_failing_stage_in_is_retried_and_fails_with_its_transfers(ens: Ens, tmp_path: Path) -> None:
    _, client = ens
    job = DbJob(1030, "nodata", transfer_retries=2, hooks={"error": f"{H}:fix_it"},
                stage_in=({"src": str(tmp_path / "x.txt"), "dest": "x.txt"},
                          {"src": str(tmp_path / "missing.h5"), "dest": "m.h5"}))  # fmt: skip
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(StagingError, match=r"stage-in of .*missing.h5 to .*nodata-1030/m.h5 failed after 3 "
                                           r"attempt\(s\): FileNotFoundError") as info:  # fmt: skip
        run(client, job, app("true", retries=3))
    assert [(t.ok, t.attempts) for t in info.value.transfers] == [(True, 1), (False, 3)]


def test_a_pre_hook_changes_params_and_a_post_hook_adds_children(ens: Ens) -> None:
    _, client = ens
    job = DbJob(1040, "hooked", params={"n": 3}, hooks={"pre": f"{H}:double_n", "post": f"{H}:spawn_children"})
    res = run(client, job, app("echo {n} b"))
    assert res.value.stdout_tail == "6 b"
    assert (Path(res.workdir) / "pre-ran").read_text() == "1"
    assert res.new_tasks == ({"app": "child", "params": {"x": "6"}, "parents": [1040]},
                             {"app": "child", "params": {"x": "b"}, "parents": [1040]})  # fmt: skip


def test_an_error_hook_restarts_with_new_params(ens: Ens) -> None:
    _, client = ens
    job = DbJob(1050, "fixable", function=f"{H}:fail_unless_fixed", hooks={"error": f"{H}:fix_it"})
    assert run(client, job, TaskSpec(retries=0)).value == "fixed"
    with pytest.raises(ValueError, match="not fixed yet"):  # without the hook: retries=1 is not enough
        run(client, DbJob(1051, "unfixable", function=f"{H}:fail_unless_fixed"), TaskSpec(retries=1))


def test_a_timeout_hook_fails_the_task(ens: Ens) -> None:
    _, client = ens
    job = DbJob(1060, "slow", function=f"{H}:sleep", args=(30,), hooks={"timeout": f"{H}:give_up"})
    with pytest.raises(TaskTimeout, match=r"exceeded timeout=0.5s on each of 1 attempt\(s\)") as info:
        run(client, job, TaskSpec(timeout=0.5, timeout_retries=3))
    assert info.value.transfers == () and info.value.new_tasks == ()  # type: ignore[attr-defined]


def test_broken_hooks_fail_the_task_naming_the_hook(ens: Ens) -> None:
    _, client = ens
    with pytest.raises(HookError, match=rf"the pre hook {H}:broken raised RuntimeError: hook is broken"):
        run(client, DbJob(1070, "broken-pre", hooks={"pre": f"{H}:broken"}), app("true", retries=2))
    job = DbJob(1071, "maybe", function=f"{H}:fail_unless_fixed", hooks={"error": f"{H}:say_maybe"})
    with pytest.raises(HookError, match=rf"the error hook {H}:say_maybe returned 'maybe': return 'retry', 'fail'"):
        run(client, job, TaskSpec())
    with pytest.raises(HookError, match=r"the post hook .*:nope raised FunctionLoadError: hooks.post .* cannot be"):
        run(client, DbJob(1072, "no-post", hooks={"post": f"{H}:nope"}), app("true"))


def test_a_job_travels_as_its_fields() -> None:
    job = DbJob(task_id=7, name="sim", params={"n": 2}, inputs=((3, "/w/p-3", "*.out"),),
                stage_in=({"src": "a", "dest": "b"},), hooks={"post": "m:f"})  # fmt: skip
    d = job.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(DbJob)}
    assert DbJob.from_dict(d) == job
    assert DbJob.from_dict({**d, "inputs": [list(i) for i in d["inputs"]], "stage_in": list(d["stage_in"])}) == job
