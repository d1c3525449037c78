"""``balsam-dask serve`` in this process: database tasks of every kind on a LocalEnsembleCluster,
their DAG, kill while running, tasks added while it runs, idle exit; the CLI's errors."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from balsam_dask.cli import main
from balsam_dask.deploy.local import LocalEnsembleCluster
from balsam_dask.errors import InvalidSpec
from balsam_dask.serve.service import ServeOptions, ServeReport, serve
from balsam_dask.store.api import Store

PRODUCE = ["sh", "-c", 'echo "$1" > out.txt', "sh", "{text}"]
CONSUME = ["sh", "-c", "cat out.txt > copy.txt"]


def run_serve(url: str, workdir: Path, nodes: int = 2, during: Any = None, **options: Any) -> ServeReport:
    store = Store(url, kind="serve")

    async def make() -> Any:
        return await LocalEnsembleCluster(nodes=nodes, cores_per_node=1, store=url, workdir=workdir,
                                          asynchronous=True)  # fmt: skip

    thread = threading.Thread(target=during, daemon=True) if during else None
    if thread:
        thread.start()
    try:
        return asyncio.run(serve(store, make, ServeOptions(**{"idle_ttl": 2.0, "tick": 0.1, **options})))
    finally:
        if thread:
            thread.join(30)
        store.close()


def _events(store: Store, tid: int) -> list[str]:
    return [e.to_state for e in store.history(tid)]


def test_serve_runs_apps_functions_and_their_dag(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with Store(url) as s:
        s.add_app("produce", PRODUCE)
        s.add_app("consume", CONSUME)
        s.add_app("fail", ["false"])
        s.add_app("sleep", ["sleep", "{seconds}"])
        s.add_app("flaky", ["sh", "-c", 'test -e "$1"', "sh", str(tmp_path / "ok")])
        ids = s.add_tasks([
            {"app": "produce", "name": "a", "params": {"text": "hello from a"}},
            {"app": "consume", "name": "b", "parents": ["a"], "input_files": ["out.txt"]},
            {"function": "tests.serve.funcs:square", "name": "f", "args": [7], "params": {"offset": 1}},
            {"app": "fail", "name": "x"},
            {"app": "produce", "name": "y", "parents": ["x"], "params": {"text": "never"}},
            {"app": "produce", "name": "z", "parents": ["x"], "on_parent_failure": "run", "params": {"text": "z"}},
            {"app": "sleep", "name": "long", "params": {"seconds": 60}},
            {"app": "flaky", "name": "flaky"},
            {"function": "tests.serve.funcs:where_am_i", "name": "iso", "isolate": True},
        ])  # fmt: skip
    a, b, f, x, y, z, long, flaky, iso = ids
    added: list[int] = []

    def during() -> None:
        with Store(url) as s2:
            time.sleep(1.0)  # a task created while serve runs (CLI, another program) is taken
            added.extend(s2.add_tasks([{"function": "tests.serve.funcs:square", "name": "late", "args": [3]}]))
            deadline = time.time() + 60
            while s2.task(long).state != "RUNNING" and time.time() < deadline:
                time.sleep(0.1)
            s2.kill_tasks(ids=[long])
            while s2.task(flaky).state != "FAILED" and time.time() < deadline:
                time.sleep(0.1)
            (tmp_path / "ok").touch()  # fixed: a retry while serve runs is taken by it
            assert s2.retry_tasks(ids=[flaky]) == (1, 0)

    t0 = time.time()
    report = run_serve(url, tmp_path, during=during)
    assert time.time() - t0 < 50, "the killed 60 s task must not hold serve"
    assert report.reason == "idle for 2 s"
    with Store(url) as s:
        states = {t.id: t.state for t in s.tasks(limit=None)}
        assert states[a] == states[b] == states[f] == states[z] == states[added[0]] == states[flaky] == "FINISHED"
        assert states[x] == "FAILED" and states[y] == "FAILED" and states[long] == "KILLED"
        assert s.history(y)[-1].message == f"parent {x} is FAILED (on_parent_failure=fail)"
        assert _events(s, flaky)[-4:] == ["RESTART_READY", "RUNNING", "RUN_DONE", "FINISHED"]
        # the child ran in its own directory with the parent's output brought in
        wb = Path(s.task(b).workdir or "")
        assert wb.name == f"b-{b}" and (wb / "copy.txt").read_text() == "hello from a\n"
        assert (wb / "out.txt").is_symlink()
        result = cloudpickle.loads(s.result_bytes(f) or b"")
        assert result == 50  # the function's own value (the store keeps what the user returned)
        # an isolated function ran in a process of its own, in its task's directory
        assert states[iso] == "FINISHED" and cloudpickle.loads(s.result_bytes(iso) or b"") == s.task(iso).workdir
        assert _events(s, a) == ["READY", "RUNNING", "RUN_DONE", "FINISHED"]
        assert _events(s, b) == ["AWAITING_PARENTS", "READY", "RUNNING", "RUN_DONE", "FINISHED"]
        # claimed by the scheduler's session: the lease is its provenance
        assert s.task(a).lease_owner is not None
    assert report.finished == 7 and report.failed == 2 and report.submitted == 10


def test_serve_options_and_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidSpec, match=r"lease=0.5 is invalid"):
        ServeOptions(lease=0.5)
    with pytest.raises(InvalidSpec, match=r"max_in_flight=0 is invalid"):
        ServeOptions(max_in_flight=0)
    store = ["--store", f"sqlite:///{tmp_path}/s.db"]
    Store(store[1]).close()
    assert main([*store, "serve"]) == 1
    assert "serve needs where to run: --local (this machine) or --site DIR" in capsys.readouterr().err
    assert main([*store, "serve", "--local", "--idle-ttl", "soon"]) == 1
    assert "--idle-ttl 'soon' is invalid: give seconds or a duration, e.g. --idle-ttl 5m" in capsys.readouterr().err
    assert main([*store, "serve", "--local", "--nodes", "0"]) == 1
    assert "--nodes 0 is invalid" in capsys.readouterr().err


def test_hooks_spawn_children_and_a_failed_stage_in_is_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with Store(url) as s:
        s.add_app("words", PRODUCE, hooks={"post": "tests.serve.funcs:spawn_children"})
        s.add_app("echo", ["sh", "-c", 'echo "$1" > out.txt', "sh", "{text}"])
        parent, missing = s.add_tasks([
            {"app": "words", "name": "words", "params": {"text": "alpha beta gamma"}},
            {"app": "echo", "name": "needs-data", "params": {"text": "x"}, "stage_in": [str(tmp_path / "nope.h5")]},
        ])  # fmt: skip
    report = run_serve(url, tmp_path)
    assert report.created == 3
    with Store(url) as s:
        kids = {t.name: t for t in s.tasks(name="child-*", limit=None)}
        assert sorted(kids) == ["child-alpha", "child-beta", "child-gamma"]
        assert all(t.state == "FINISHED" and t.parents == [parent] for t in kids.values())
        assert Path(kids["child-beta"].workdir or "", "out.txt").read_text() == "beta\n"
        failed = s.task(missing)
        assert failed.state == "FAILED" and "stage-in" in (s.history(missing)[-1].message or "")
    assert main(["--store", url, "show", str(missing)]) == 0
    out = capsys.readouterr().out
    assert "nope.h5" in out and "in" in out
