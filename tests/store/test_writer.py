"""The batching writer: never blocks, batches, survives outages, loses nothing, writes nothing twice."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import text

from balsam_dask.spec import TaskSpec
from balsam_dask.store import NewTask, Store, Transition

LIFECYCLE = [("CREATED", "READY"), ("READY", "RUNNING"), ("RUNNING", "RUN_DONE"), ("RUN_DONE", "FINISHED")]


def _lifecycle_ops(store: Store, n_tasks: int, tag: str) -> list[object]:
    spec = TaskSpec(tags={"proc": tag})
    ops: list[object] = []
    for i in range(n_tasks):
        t = NewTask(store.new_id(), f"{tag}-{i}", spec)
        ops.append(t)
        for a, b in LIFECYCLE:
            ops.append(Transition(store.new_id(), t.id, a, b, time.time(), worker=tag))
    return ops


def test_flush_and_close_write_everything(store: Store) -> None:
    w = store.writer(max_batch=100, max_delay=5.0)
    ops = _lifecycle_ops(store, 250, "a")
    w.put_many(ops)  # type: ignore[arg-type]
    assert w.flush(timeout=30)
    assert store.count(state="FINISHED") == 250
    more = _lifecycle_ops(store, 10, "b")
    for op in more:
        w.put(op)  # type: ignore[arg-type]
    w.close()  # flushes what is queued even though max_delay has not passed
    assert store.count(state="FINISHED") == 260
    assert w.stats.rejected == [] and w.stats.written == 260 * 5


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_held_writer_writes_nothing_until_released(store: Store, kind: str) -> None:
    """While held, neither max_delay nor (for the process writer, max_batch 50) a full batch
    makes the writer write; released, it writes what waited, the rows in their state after the
    transitions queued meanwhile (one insert each, no update: the thread writer's max_batch of
    500 keeps all 400 ops in one transaction); flush writes at once even while held."""
    from balsam_dask.store.procwriter import ProcessWriter
    from tests.store.test_api import _count_task_updates, _task_updates

    _count_task_updates(store)
    w = store.writer(max_batch=500, max_delay=0.02) if kind == "thread" else ProcessWriter(store, max_batch=50,
                                                                                           max_delay=0.02)  # fmt: skip
    try:
        w.hold()
        news = [NewTask(store.new_id(), f"h-{i}", TaskSpec()) for i in range(200)]  # 4 process batches
        w.put_many(news)  # type: ignore[arg-type]
        time.sleep(0.3)  # many times max_delay
        for t in news:
            w.put(Transition(store.new_id(), t.id, "CREATED", "READY", time.time()))  # type: ignore[arg-type]
        time.sleep(0.3)
        assert store.count() == 0 and w.pending == 400
        w.release()
        deadline = time.monotonic() + 30
        while store.count(state="READY") < 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.summary() == {"READY": 200} and _task_updates(store) == 0
        w.hold()
        late = NewTask(store.new_id(), "late", TaskSpec())
        w.put(late)  # type: ignore[arg-type]
        assert w.flush(timeout=30) and store.task(late.id).state == "CREATED"
    finally:
        w.release()
        w.close()


def test_put_never_blocks_while_the_database_is_locked(tmp_path: object) -> None:
    import sqlite3

    store = Store(f"sqlite:///{tmp_path}/lock.db")
    w = store.writer(max_batch=50, max_delay=0.01)
    ops = _lifecycle_ops(store, 2000, "x")
    blocker = sqlite3.connect(f"{tmp_path}/lock.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # nobody else can write
    try:
        t0 = time.perf_counter()
        for op in ops:
            w.put(op)  # type: ignore[arg-type]
        put_time = time.perf_counter() - t0
        time.sleep(0.3)
        assert w.pending > 0  # the writer is stuck behind the lock...
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert put_time < 1.0, f"10,000 puts took {put_time:.2f}s while the database was locked"
    w.close()  # ...and catches up once it is released
    assert store.count(state="FINISHED") == 2000
    store.close()


def _record_in_child(url: str, tag: str, n_tasks: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        store = Store(url)
        w = store.writer(max_batch=500, max_delay=0.05)
        ops = _lifecycle_ops(store, n_tasks, tag)
        for op in ops:
            w.put(op)  # type: ignore[arg-type]
        w.close()
        q.put((tag, w.stats.written, len(w.stats.rejected), None))
        store.close()
    except Exception as e:  # pragma: no cover - reported to the parent
        q.put((tag, 0, 0, repr(e)))


@pytest.mark.slow
def test_four_processes_record_5000_events_each(store_url: str) -> None:
    Store(store_url).close()  # create the schema once
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    n_tasks = 1000  # 1,000 tasks x 5 events (creation + 4 transitions) = 5,000 per process
    procs = [ctx.Process(target=_record_in_child, args=(store_url, f"p{i}", n_tasks, q)) for i in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert all(err is None for *_, err in results), results
    assert sorted(r[1] for r in results) == [5000] * 4
    store = Store(store_url)
    try:
        events = store.events()
        assert len(events) == 4 * n_tasks * 4
        assert len({e.id for e in events}) == len(events)
        per_task = Counter(e.task_id for e in events)
        assert set(per_task.values()) == {4}
        for proc in ("p0", "p1", "p2", "p3"):
            assert store.count(tags={"proc": proc}, state="FINISHED") == n_tasks
        kept = store.summary()
        store.rebuild_counts()
        assert store.summary() == kept == {"FINISHED": 4 * n_tasks}
    finally:
        store.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_writer_survives_terminated_connections() -> None:
    from tests.conftest import drop_pg_schema, new_pg_schema_url

    url, schema = new_pg_schema_url()
    url += f"&application_name=bd_{schema}"
    killer = None
    try:
        store = Store(url)
        killer = Store(url)
        w = store.writer(max_batch=200, max_delay=0.02, backoff_initial=0.02)
        n_tasks = 3000
        ops = _lifecycle_ops(store, n_tasks, "o")
        kills = 0
        done = threading.Event()

        def produce() -> None:
            for i, op in enumerate(ops):
                w.put(op)  # type: ignore[arg-type]
                if i % 500 == 0:
                    time.sleep(0.02)  # keep the writer busy for a while
            done.set()

        t = threading.Thread(target=produce)
        t.start()
        # kill often, until everything is written or the writer has retried 10 writes: a kill must
        # land during a write (not only on an idle pooled connection, which the next checkout
        # replaces without a retry); on a loaded machine a write can outlast the 20 ms between
        # kills, and killing on would never let one through
        while (not done.is_set() or w.pending) and w.stats.retries < 10:
            time.sleep(0.02)
            with killer.engine.connect() as conn:
                n = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :app AND pid <> pg_backend_pid()"
                    ),
                    {"app": f"bd_{schema}"},
                ).scalar_one()
                conn.commit()
            kills += int(n)
        t.join()
        w.close(timeout=60)
        assert kills >= 3, "the test did not manage to kill the writer's connection"
        assert w.stats.retries >= 1 and w.stats.replays >= 1
        events = store.events()
        assert len(events) == n_tasks * 4 and len({e.id for e in events}) == n_tasks * 4
        assert set(Counter(e.task_id for e in events).values()) == {4}
        assert store.count() == n_tasks and store.count(state="FINISHED") == n_tasks
        assert w.stats.rejected == []
        store.close()
    finally:
        if killer is not None:
            killer.engine.dispose()
        drop_pg_schema(schema)
