"""The writer in a process of its own: same guarantees as the in-process writer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial

import pytest

from balsam_dask.spec import TaskSpec
from balsam_dask.store import NewTask, Store, Transition
from balsam_dask.store.ops import Heartbeat
from balsam_dask.store.procwriter import NICE, ProcessWriter
from tests.store.test_writer import LIFECYCLE, _lifecycle_ops


def test_put_flush_close(store: Store) -> None:
    w = ProcessWriter(store, max_batch=200, max_delay=0.05)
    w.put_many(_lifecycle_ops(store, 300, "p"))  # type: ignore[arg-type]
    assert w.flush(timeout=60)
    assert store.count(state="FINISHED") == 300
    assert w.stats.written == 300 * 5 and w.stats.rejected == []
    # durable payloads given as callables are serialized by the feeder, not the caller
    t = NewTask(store.new_id(), "lazy", TaskSpec(), payload=partial(bytes, b"payload"))
    w.put(t)
    w.close()
    assert store.payload(t.id) == b"payload"
    assert not w.alive


def test_the_writer_process_cpu_priority(store: Store) -> None:
    """``nice`` lowers the child's CPU priority (procwriter.NICE by default: the scheduler's)."""
    import psutil

    base = os.nice(0)
    for nice, expected in ((None, min(19, base + NICE)), (0, base), (5, min(19, base + 5)), (19, 19)):
        w = ProcessWriter(store, max_delay=0.05) if nice is None else ProcessWriter(store, max_delay=0.05, nice=nice)
        try:
            w.put(Heartbeat(store.session_id, time.time()))  # the child starts at the first shipment
            assert w.flush(timeout=60)  # the child answers: it has set its priority
            assert w.pid is not None and psutil.Process(w.pid).nice() == expected
        finally:
            w.close()


def test_illegal_ops_are_isolated(store: Store) -> None:
    (tid,) = store.create_tasks([TaskSpec(name="x")])
    w = ProcessWriter(store, max_batch=10, max_delay=0.05)
    good = Transition(store.new_id(), tid, "CREATED", "READY", time.time())
    bad = Transition(store.new_id(), tid, "READY", "FINISHED", time.time())
    w.put(good)
    w.put(bad)
    w.close()
    assert store.task(tid).state == "READY"
    assert len(w.stats.rejected) == 1 and "READY -> FINISHED" in w.stats.rejected[0][1]


CHILD = """
import os, sys, time
from balsam_dask.store import Store
from balsam_dask.store.procwriter import NICE, ProcessWriter
from tests.store.test_writer import LIFECYCLE, _lifecycle_ops
s = Store(sys.argv[1])
w = ProcessWriter(s, max_batch=50, max_delay=0.02)
w.put_many(_lifecycle_ops(s, 100, "orphan"))
time.sleep(1.0)  # the feeder ships everything
print(w.pid, flush=True)
os._exit(0)  # the scheduler process dies without closing anything
"""


def test_writer_outlives_nothing_when_its_parent_dies(store_url: str) -> None:
    Store(store_url).close()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", CHILD, store_url], capture_output=True, text=True, cwd=root,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.split()[-1])
    deadline = time.time() + 30
    while time.time() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the writer process outlived its parent"
    s = Store(store_url)
    try:
        assert s.count(tags={"proc": "orphan"}, state="FINISHED") == 100  # what it received was written
    finally:
        s.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_queued_transitions_are_not_objects_for_the_garbage_collector(store: Store) -> None:
    """Transitions wait for their shipment as fields in one list, not one tracked object each
    (those would reach the scheduler's oldest GC generation and lengthen its collections)."""
    import gc

    (tid,) = store.create_tasks([TaskSpec(name="gc")])
    w = ProcessWriter(store, max_batch=100_000, max_delay=60.0)  # nothing ships while we count
    try:
        gc.collect()
        before = len(gc.get_objects())
        for i in range(5000):
            w.put_transition(store.new_id(), tid, "CREATED", "READY", float(i), 0, "tcp://w:1", None, None)
        gc.collect()
        assert len(gc.get_objects()) - before < 50
        assert w.pending == 5000
    finally:
        w.close()  # the 5000 are illegal after the first (READY -> READY): rejected, not lost
    assert store.task(tid).state == "READY" and len(w.stats.rejected) == 4999


def test_a_task_row_is_shipped_before_its_transitions(store: Store) -> None:
    """Transitions travel apart from the other ops; whatever the interleaving and however
    small the shipments, each task's row reaches the writer before its first transition,
    and a task's transitions keep their order whether given as ops or as fields."""
    import random

    rng = random.Random(7)
    w = ProcessWriter(store, max_batch=7, max_delay=0.001)  # shipments of at most 28 ops
    try:
        pending: list[tuple[int, int]] = []  # (task id, lifecycle step)
        for i in range(400):
            t = NewTask(store.new_id(), f"order-{i}", TaskSpec())
            w.put(t)
            pending.append((t.id, 0))
            while pending and rng.random() < 0.7:
                k = rng.randrange(len(pending))
                tid, step = pending[k]
                a, b = LIFECYCLE[step]
                if rng.random() < 0.5:
                    w.put(Transition(store.new_id(), tid, a, b, time.time()))
                else:
                    w.put_transition(store.new_id(), tid, a, b, time.time(), 0, None, None, None)
                if step + 1 == len(LIFECYCLE):
                    pending.pop(k)
                else:
                    pending[k] = (tid, step + 1)
            if rng.random() < 0.05:
                time.sleep(0.002)  # let the feeder ship mid-stream
        for tid, step in pending:
            for a, b in LIFECYCLE[step:]:
                w.put_transition(store.new_id(), tid, a, b, time.time(), 0, None, None, None)
        assert w.flush(timeout=60)
    finally:
        w.close()
    assert w.stats.rejected == [] and w.stats.written == 400 * (1 + len(LIFECYCLE))
    assert store.count(state="FINISHED") == 400


def test_no_writer_process_until_something_is_shipped(store: Store) -> None:
    """A scheduler that records nothing starts no process: start and close take no time."""
    t0 = time.perf_counter()
    w = ProcessWriter(store, max_delay=0.01)
    time.sleep(0.1)  # several feeder rounds with nothing queued
    assert w.pid is None and w.flush(timeout=5)
    w.close()
    assert w.pid is None and time.perf_counter() - t0 < 0.5


def test_close_before_the_first_shipment_writes_from_the_parent(store: Store) -> None:
    """What a scheduler recorded before its first shipment is written at close without
    starting a writer process (which took half a second to start): all of it, quickly."""
    w = ProcessWriter(store, max_delay=60.0)  # nothing ships before close
    w.put_many(_lifecycle_ops(store, 300, "early"))  # type: ignore[arg-type]
    t = NewTask(store.new_id(), "lazy", TaskSpec(), payload=partial(bytes, b"payload"))
    w.put(t)
    t0 = time.perf_counter()
    w.close()
    assert time.perf_counter() - t0 < 0.3
    assert w.pid is None and not w.alive
    assert store.count(tags={"proc": "early"}, state="FINISHED") == 300 and store.payload(t.id) == b"payload"
    assert w.stats.written == 300 * (1 + len(LIFECYCLE)) + 1 and w.stats.rejected == []


def test_a_close_writing_from_the_parent_keeps_its_timeout(store_url: str) -> None:
    """The store locked at close, nothing shipped yet: close gives up after its timeout (not
    SQLite's 60-second busy timeout) and counts what it could not write."""
    import sqlite3

    from balsam_dask.errors import StoreUnavailable

    if not store_url.startswith("sqlite"):
        pytest.skip("locks the SQLite file to make it unavailable")
    store = Store(store_url)
    w = ProcessWriter(store, max_delay=60.0, backoff_max=0.05)
    lock = sqlite3.connect(store_url.split("///", 1)[1], timeout=0, isolation_level=None)
    try:
        w.put_many(_lifecycle_ops(store, 5, "late"))  # type: ignore[arg-type]
        lock.execute("BEGIN EXCLUSIVE")
        t0 = time.perf_counter()
        with pytest.raises(StoreUnavailable, match=r"could not write 25 operations before closing .*unreachable"):
            w.close(timeout=1.0)
        assert time.perf_counter() - t0 < 3 and w.pid is None
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        store.close()


def test_a_killed_writer_process_is_replaced_and_nothing_is_lost_or_doubled(store: Store) -> None:
    """SIGKILL of the writer process mid-stream: the next one replays the shipments the dead
    one had not confirmed; every task ends with its own five records, none twice."""
    import signal

    w = ProcessWriter(store, max_batch=100, max_delay=0.01)
    try:
        ops = _lifecycle_ops(store, 2000, "k")
        w.put_many(ops[:5000])  # type: ignore[arg-type]
        deadline = time.time() + 30
        while w.pid is None and time.time() < deadline:
            time.sleep(0.01)
        first = w.pid
        assert first is not None
        time.sleep(0.05)  # some shipments written, some not
        os.kill(first, signal.SIGKILL)
        w.put_many(ops[5000:])  # type: ignore[arg-type]
        assert w.flush(timeout=60)
        assert w.pid != first and w.stats.restarts == 1
        assert f"pid {first}" in (w.stats.last_error or "")
    finally:
        w.close()
    assert store.count(tags={"proc": "k"}, state="FINISHED") == 2000
    assert w.stats.rejected == []
    from sqlalchemy import text

    with store.engine.connect() as conn:
        events = conn.execute(text("SELECT COUNT(*), COUNT(DISTINCT id) FROM events")).one()
    assert events[0] == events[1] == 2000 * len(LIFECYCLE)


def test_ctrl_c_in_the_terminal_does_not_stop_the_writer(store: Store) -> None:
    """The writer process runs in a session of its own and ignores SIGINT: a Ctrl-C meant
    for the driver does not cut recording short."""
    import signal

    w = ProcessWriter(store, max_delay=0.01)
    try:
        w.put_many(_lifecycle_ops(store, 10, "int"))  # type: ignore[arg-type]
        assert w.flush(timeout=60) and w.pid is not None
        assert os.getsid(w.pid) == w.pid != os.getsid(0)
        os.kill(w.pid, signal.SIGINT)
        time.sleep(0.3)
        w.put_many(_lifecycle_ops(store, 10, "int"))  # type: ignore[arg-type]
        assert w.flush(timeout=60) and w.stats.restarts == 0
    finally:
        w.close()
    assert store.count(tags={"proc": "int"}, state="FINISHED") == 20


def test_close_reports_what_it_could_not_write(store_url: str) -> None:
    """A store that stays unreachable: close gives up after its timeout and says how many
    operations were not written, instead of reporting success."""
    import sqlite3

    from balsam_dask.errors import StoreUnavailable

    if not store_url.startswith("sqlite"):
        pytest.skip("locks the SQLite file to make it unavailable")
    store = Store(store_url)
    w = ProcessWriter(store, max_delay=0.01, backoff_max=0.05)
    try:
        w.put_many(_lifecycle_ops(store, 5, "ok"))  # type: ignore[arg-type]
        assert w.flush(timeout=60)
        path = store_url.split("///", 1)[1]
        lock = sqlite3.connect(path, timeout=0, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # every write now fails (transient: the database is locked)
        try:
            w.put_many(_lifecycle_ops(store, 5, "late"))  # type: ignore[arg-type]
            with pytest.raises(StoreUnavailable, match=r"could not write 25 operations before closing .*unreachable"):
                w.close(timeout=2.0)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    finally:
        store.close()
