"""Bundled dispatch (``client.map(..., bundled=True)``) on a real LocalEnsembleCluster: every
task recorded as its own, exact core accounting, retries, timeouts, kill, a node lost
mid-bundle, the asynchronous client, bad input."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from balsam_dask import Client, Store, TaskTimeout
from balsam_dask.client.bundled import BundledFuture
from balsam_dask.errors import AppError, InvalidSpec
from balsam_dask.protocol import BUNDLE_SUBMIT_OP
from tests.clusters import ensemble
from tests.integration.test_faults import flaky


def inc(x: int) -> int:
    return x + 1


def hold(seconds: float, log: str, tag: int) -> int:
    """Sleeps; appends its start and end (pid, time) to ``log``."""
    with open(log, "a") as fh:
        fh.write(f"start {tag} {os.getpid()} {time.time()}\n")
    time.sleep(seconds)
    with open(log, "a") as fh:
        fh.write(f"end {tag} {os.getpid()} {time.time()}\n")
    return tag


def once(path: str, x: int, seconds: float = 0.0) -> int:
    """Appends ``x`` to ``path`` (a side effect that shows how often it ran); sleeps."""
    time.sleep(seconds)
    with open(path, "a") as fh:
        fh.write(f"{x} {os.getpid()}\n")
    return x * x


def marker_then_sleep(marker: str, seconds: float) -> int:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def _overlap(intervals: list[tuple[float, float, int]]) -> int:
    """The most cores in use at once over (start, end, cores) intervals."""
    points = sorted([(s, c) for s, _, c in intervals] + [(e, -c) for _, e, c in intervals], key=lambda p: (p[0], p[1]))
    most = now = 0
    for _, c in points:
        now += c
        most = max(most, now)
    return most


def test_each_bundled_task_is_recorded_as_its_own(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        futs = client.map(inc, range(300), bundled=True, tags={"exp": "b"}, name="inc")
        assert all(isinstance(f, BundledFuture) for f in futs)
        assert client.gather(futs) == list(range(1, 301))
        assert futs[0].status == "finished"
        # concurrent.futures' own tools work on them
        done, not_done = concurrent.futures.wait(futs, timeout=10)
        assert len(done) == 300 and not not_done
        client.flush()
        with Store(cluster.store_url) as s:
            rows = s.tasks(tags={"exp": "b"}, limit=None)
            assert len(rows) == 300 and {t.state for t in rows} == {"FINISHED"}
            nodes = set()
            for t in rows[:50]:
                hist = s.history(t.id)
                assert [e.to_state for e in hist] == ["READY", "RUNNING", "RUN_DONE", "FINISHED"]
                running = hist[1]
                assert running.worker in ("node-0", "node-1") and running.ts <= hist[2].ts
                # each event: when its task entered the state it leaves; a run's end names its node
                assert [e.since for e in hist[1:]] == [e.ts for e in hist[:-1]] and hist[0].since is not None
                assert hist[2].worker == running.worker
                nodes.add(running.worker)
                assert t.attempt == 1 and t.name == "inc"
            assert nodes == {"node-0", "node-1"}  # both nodes took bundles


def test_cores_are_exact_with_bundled_and_dask_tasks_together(tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    url = f"sqlite:///{tmp_path}/s.db"
    with ensemble(url, tmp_path, nodes=2, cores_per_node=2) as (_, client):
        ones = client.map(hold, [0.15] * 16, [log] * 16, range(16), bundled=True, cores=1)
        twos = client.map(hold, [0.15] * 6, [log] * 6, range(100, 106), bundled=True, cores=2)
        plain = client.map(hold, [0.15] * 6, [log] * 6, range(200, 206), cores=1)  # Dask-dispatched
        assert sorted(client.gather(ones + twos)) == sorted([*range(16), *range(100, 106)])
        assert client.gather(plain) == list(range(200, 206))
    starts: dict[int, tuple[int, float]] = {}
    spans: dict[int, list[tuple[float, float, int]]] = {}
    for line in Path(log).read_text().splitlines():
        what, tag, pid, ts = line.split()
        if what == "start":
            starts[int(tag)] = (int(pid), float(ts))
        else:
            pid0, t0 = starts[int(tag)]
            spans.setdefault(pid0, []).append((t0, float(ts), 2 if 100 <= int(tag) < 200 else 1))
    assert len(spans) == 2  # each node-worker is a process of its own
    for pid, intervals in spans.items():
        assert _overlap(intervals) <= 2, (pid, sorted(intervals))
    assert max(_overlap(i) for i in spans.values()) == 2  # and the cores were used


def test_retries_timeouts_and_errors_per_task(tmp_path: Path) -> None:
    with ensemble(f"sqlite:///{tmp_path}/s.db", tmp_path, nodes=1, cores_per_node=2) as (cluster, client):
        ok, bad = client.map(flaky, [str(tmp_path / "a"), str(tmp_path / "b")], [1, 5], retries=1, bundled=True,
                             key=["flaky-ok", "flaky-bad"])  # fmt: skip
        assert ok.result(timeout=60) == "ok after 2"
        with pytest.raises(ValueError, match="flaky failure 2"):
            bad.result(timeout=60)
        assert bad.status == "error"
        (slow,) = client.map(time.sleep, [30], timeout=0.5, isolate=True, bundled=True, key=["slow"])
        with pytest.raises(TaskTimeout, match=r"task slow exceeded timeout=0.5s on each of 4 attempt"):
            slow.result(timeout=60)
        client.flush()
        with Store(cluster.store_url) as s:

            def states(key: str) -> list[str]:
                (t,) = s.tasks(key=key)
                return [e.to_state for e in s.history(t.id)]

            assert states("flaky-ok") == ["READY", "RUNNING", "RUN_ERROR", "RESTART_READY", "RUNNING", "RUN_DONE",
                                          "FINISHED"]  # fmt: skip
            assert states("flaky-bad")[-3:] == ["RUNNING", "RUN_ERROR", "FAILED"]
            (t,) = s.tasks(key="flaky-bad")
            assert "flaky failure 2" in (t.error_tail or "")
            assert states("slow").count("RUN_TIMEOUT") == 4 and states("slow")[-2:] == ["RUN_TIMEOUT", "FAILED"]
            (t,) = s.tasks(key="slow")
            assert t.workdir  # the isolated attempt ran in its own work directory


def test_kill_bundled_tasks_running_and_queued(tmp_path: Path) -> None:
    out = str(tmp_path / "ran")
    with ensemble(f"sqlite:///{tmp_path}/s.db", tmp_path, nodes=1, cores_per_node=1) as (cluster, client):
        futs = client.map(once, [out] * 6, range(6), [0.5] * 6, bundled=True)
        deadline = time.time() + 30
        while not Path(out).exists() and time.time() < deadline:
            time.sleep(0.02)
        killed = client.kill(futs[2:])  # task 0 ended (it wrote), task 1 runs, the others are queued
        assert set(killed) == {f.key for f in futs[2:]}
        for f in futs[2:]:
            with pytest.raises(concurrent.futures.CancelledError):
                f.result(timeout=30)
        assert futs[0].result(timeout=30) == 0
        time.sleep(1.0)  # what was queued never starts
        client.flush()
        ran = {int(line.split()[0]) for line in Path(out).read_text().splitlines()}
        assert ran <= {0, 1, 2} and not ran & {3, 4, 5}
        with Store(cluster.store_url) as s:
            states = {t.key: t.state for t in s.tasks(limit=None)}
            assert {states[f.key] for f in futs[3:]} == {"KILLED"}
        # a future's cancel() kills too
        (f,) = client.map(time.sleep, [2], bundled=True)
        time.sleep(0.3)
        assert f.cancel() and f.cancelled()
        deadline = time.time() + 30
        while time.time() < deadline:
            client.flush()
            with Store(cluster.store_url) as s:
                (t,) = s.tasks(key=f.key)
                if t.state == "KILLED":
                    break
            time.sleep(0.2)
        assert t.state == "KILLED"


def test_a_node_lost_mid_bundle_gives_back_only_unfinished_tasks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    out = str(tmp_path / "ran")
    marker = str(tmp_path / "marker")
    with ensemble(url, tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        futs = client.map(once, [out] * 60, range(60), [0.05] * 60, bundled=True)
        victim = client.map(marker_then_sleep, [marker], [60], bundled=True, key=["victim"])[0]
        deadline = time.time() + 30
        while not Path(marker).exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        pid = int(Path(marker).read_text())
        os.kill(pid, signal.SIGKILL)  # a node-worker, mid-bundle
        assert sorted(client.gather(futs)) == sorted(x * x for x in range(60))
        assert victim.result(timeout=120) != pid  # ran again, on a node-worker still alive
        client.flush()
        with Store(cluster.store_url) as s:
            rows = {t.key: t for t in s.tasks(limit=None)}
            finished_once = 0
            for f in futs:
                hist = s.history(rows[f.key].id)
                states = [e.to_state for e in hist]
                assert states.count("FINISHED") == 1 and states[-1] == "FINISHED"
                if states.count("RUNNING") == 1:
                    finished_once += 1
            hist = [e.to_state for e in s.history(rows["victim"].id)]
            assert hist.count("RUNNING") == 2 and "RESTART_READY" in hist and hist[-1] == "FINISHED"
    lines = [int(line.split()[0]) for line in Path(out).read_text().splitlines()]
    assert sorted(set(lines)) == list(range(60))
    assert finished_once >= 60 - 10  # a task recorded FINISHED before the kill never ran again


def test_bundled_apps_keep_their_work_directories_and_output(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with ensemble(url, tmp_path, nodes=1, cores_per_node=2) as (cluster, client):
        futs = [client.submit_app("sh -c 'echo out {i}; echo err {i} >&2'", {"i": i}, bundled=True, name=f"echo{i}")
                for i in range(4)]  # fmt: skip
        bad = client.submit_app(["sh", "-c", "exit 3"], bundled=True, name="bad")
        results = client.gather(futs)
        assert [r.stdout_tail.strip() for r in results] == [f"out {i}" for i in range(4)]
        assert results[1].stdout_path.read_text() == "out 1\n" and results[1].stderr_path.read_text() == "err 1\n"
        assert len({r.workdir for r in results}) == 4
        with pytest.raises(AppError, match="return code 3"):
            bad.result(timeout=60)
        client.flush()
        with Store(cluster.store_url) as s:
            (t,) = s.tasks(name="echo1")
            assert t.state == "FINISHED" and t.return_code == 0 and Path(t.workdir) == results[1].workdir
            assert cloudpickle.loads(s.result_bytes(t.id) or b"") == results[1]  # the value, stored
            hist = s.history(t.id)
            assert "command: sh -c" in (hist[-2].message or "")  # RUN_DONE names the command
            (b,) = s.tasks(name="bad")
            assert b.state == "FAILED" and b.return_code == 3


def count_submits(dask_scheduler: Any) -> None:
    """Have the scheduler note the size of each bundled submission it receives."""
    plugin = dask_scheduler.plugins["balsam-dask"]
    handler = dask_scheduler.stream_handlers[BUNDLE_SUBMIT_OP]
    plugin.seen_submits = []

    def counting(tasks: list[Any], **kwargs: Any) -> None:
        plugin.seen_submits.append([t["key"] for t in tasks])
        handler(tasks=tasks, **kwargs)

    dask_scheduler.stream_handlers[BUNDLE_SUBMIT_OP] = counting


def test_submissions_of_one_loop_turn_leave_in_one_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with ensemble(url, tmp_path, nodes=1, cores_per_node=2) as (_cluster, client):
        client.run_on_scheduler(count_submits)
        client.balsam_info(refresh=True)  # fresh: no round trip to the scheduler while its loop sleeps
        client.loop.add_callback(time.sleep, 1.0)  # the loop is busy while the submissions queue
        apps = [client.submit_app(["true"], bundled=True, key=f"app-{i}") for i in range(20)]
        mapped = client.map(inc, range(3), bundled=True, key=[f"inc-{i}" for i in range(3)])
        more = client.submit_app(["true"], bundled=True, key="app-last")
        assert [r.returncode for r in client.gather([*apps, more])] == [0] * 21
        assert client.gather(mapped) == [1, 2, 3]
        seen = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["balsam-dask"].seen_submits)
        assert seen == [[f"app-{i}" for i in range(20)] + [f"inc-{i}" for i in range(3)] + ["app-last"]]


def test_a_long_task_holds_no_queued_task_hostage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with ensemble(url, tmp_path, nodes=2, cores_per_node=1) as (cluster, client):
        long = client.map(time.sleep, [4.0], bundled=True, key=["long"], priority=1)[0]
        time.sleep(0.5)  # it runs on one node; the short ones fill both nodes' queues
        short = client.map(time.sleep, [0.05] * 30, bundled=True)
        client.gather(short)
        assert not long.done()  # the short tasks queued behind it were taken back and ran elsewhere
        long.result(timeout=30)
        client.flush()
        with Store(cluster.store_url) as s:
            (lt,) = s.tasks(key="long")
            node = next(e.worker for e in s.history(lt.id) if e.to_state == "RUNNING")
            ran_there = 0
            for f in short:
                (t,) = s.tasks(key=f.key)
                ran_there += next(e.worker for e in s.history(t.id) if e.to_state == "RUNNING") == node
            assert ran_there == 0


def test_the_asynchronous_client(tmp_path: Path) -> None:
    async def main() -> list[int]:
        from balsam_dask import LocalEnsembleCluster

        async with LocalEnsembleCluster(nodes=1, cores_per_node=2, store=f"sqlite:///{tmp_path}/s.db",
                                        workdir=tmp_path, asynchronous=True) as cluster:  # fmt: skip
            async with Client(cluster, asynchronous=True) as client:
                futs = client.map(inc, range(20), bundled=True)
                first = await futs[0]
                rest = await client.gather(futs[1:])
                return [first, *rest]

    assert asyncio.run(main()) == list(range(1, 21))


def test_bad_input_is_refused_at_submit(ens: tuple[object, Client]) -> None:
    _, client = ens
    with pytest.raises(InvalidSpec, match=r"bundled='yes' is invalid: use bundled=True or bundled=False"):
        client.map(inc, [1], bundled="yes")  # type: ignore[arg-type]
    fut = client.submit(inc, 1)
    with pytest.raises(InvalidSpec, match=r"bundled tasks take values, not futures .*bundled=False"):
        client.map(inc, [fut], bundled=True)
    with pytest.raises(InvalidSpec, match=r"drop workers=/resources=, or bundled=False"):
        client.map(inc, [1], bundled=True, resources={"GPU": 1})
    with pytest.raises(InvalidSpec, match=r"key= has 1 keys for 2 tasks"):
        client.map(inc, [1, 2], bundled=True, key=["only-one"])
    with pytest.raises(InvalidSpec, match=r"cores=99"):
        client.map(inc, [1], bundled=True, cores=99)
    with pytest.raises(InvalidSpec, match=r"bundled=1 is invalid: use bundled=True or bundled=False"):
        client.submit_app("true", bundled=1)  # type: ignore[arg-type]
    assert fut.result() == 2
