"""The Store API end to end, on a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from balsam_dask.errors import (
    IllegalTransition,
    InvalidSpec,
    InvalidStoreURL,
    InvalidTags,
    SchemaMissing,
    StoreUnavailable,
    UnknownTask,
)
from balsam_dask.spec import Resources, TaskSpec
from balsam_dask.store import NewTask, Store, TaskUpdate, Transition
from balsam_dask.store.engine import check_sqlite_version


def _move(store: Store, tid: int, *states: str, worker: str | None = None) -> None:
    cur = store.task(tid).state
    ops = []
    for s in states:
        ops.append(Transition(store.new_id(), tid, cur, s, time.time(), worker=worker))
        cur = s
    store.apply(ops)


def test_create_and_query(store: Store) -> None:
    sweep = [TaskSpec(name=f"fit-{i}", tags={"exp": "sweep", "lr": i / 10}) for i in range(30)]
    big = [TaskSpec(kind="mpi", name="sim", resources=Resources(nodes=4, ranks_per_node=8), tags={"exp": "sim"})]
    ids = store.create_tasks(sweep + big)
    assert len(ids) == 31 and len(set(ids)) == 31
    assert store.count() == 31
    assert store.count(tags={"exp": "sweep"}) == 30
    assert [t.name for t in store.tasks(tags={"exp": "sweep", "lr": 0.3})] == ["fit-3"]
    assert [t.id for t in store.tasks(name="sim")] == [ids[-1]]
    assert store.count(name="fit-1*") == 1 + 10  # fit-1, fit-10..fit-19
    mpi = store.task(ids[-1])
    assert (mpi.kind, mpi.nodes, mpi.ranks_per_node, mpi.cores, mpi.state) == ("mpi", 4, 8, 8, "CREATED")
    assert mpi.spec["nodes"] == 4 and mpi.tags == {"exp": "sim"}

    # paging by cursor and by offset agree
    pages, after = [], None
    while True:
        page = store.tasks(limit=7, after=after)
        if not page:
            break
        pages.extend(t.id for t in page)
        after = page[-1].id
    assert pages == sorted(ids)
    assert [t.id for t in store.tasks(limit=5, offset=5)] == sorted(ids)[5:10]
    assert [t.id for t in store.tasks(limit=3, newest_first=True)] == sorted(ids, reverse=True)[:3]

    # one state (ordered through the (state, id) index), or several: still by id, both ways
    ready = sorted(ids)[::3]
    store.apply([Transition(store.new_id(), i, "CREATED", "READY", time.time()) for i in reversed(ready)])
    assert [t.id for t in store.tasks(state="READY")] == ready
    assert [t.id for t in store.tasks(state=iter(["READY"]), limit=2, after=ready[0])] == ready[1:3]
    assert [t.id for t in store.tasks(state=("READY",), newest_first=True, after=ready[-1])] == ready[-2::-1]
    assert [t.id for t in store.tasks(state=["READY", "CREATED"], limit=4)] == sorted(ids)[:4]

    # time range
    t0 = time.time()
    later = store.create_tasks([TaskSpec(name="late")])
    assert [t.id for t in store.tasks(since=t0)] == later
    assert store.count(until=t0) == 31


def test_history_and_states(store: Store) -> None:
    (tid,) = store.create_tasks([TaskSpec(name="one", resources=Resources.serial(2, gpus=1))])
    _move(store, tid, "READY", "RUNNING", worker="tcp://n1:1")
    store.apply([TaskUpdate(tid, {"workdir": "/tmp/w", "return_code": 0})])
    _move(store, tid, "RUN_DONE", "FINISHED")
    hist = store.history(tid)
    assert [(e.from_state, e.to_state) for e in hist] == [
        ("CREATED", "READY"), ("READY", "RUNNING"), ("RUNNING", "RUN_DONE"), ("RUN_DONE", "FINISHED"),
    ]  # fmt: skip
    assert hist[1].worker == "tcp://n1:1"
    t = store.task(tid)
    assert (t.state, t.workdir, t.return_code) == ("FINISHED", "/tmp/w", 0)
    assert store.summary() == {"FINISHED": 1}
    with pytest.raises(UnknownTask, match="no task with id 999"):
        store.history(999)
    with pytest.raises(UnknownTask, match="no task with id 999"):
        store.task(999)


def test_an_event_stamped_by_a_clock_that_ran_behind_stays_after_its_task_entered_the_state(store: Store) -> None:
    """A worker's clock may read earlier than the scheduler's: its RUN_DONE keeps the order
    of the task's history (ordered by time) and never makes a negative run."""
    a, b = store.create_tasks([TaskSpec(name="a"), TaskSpec(name="b")])
    t0 = time.time()

    def ev(tid: int, src: str, dst: str, ts: float) -> Transition:
        return Transition(store.new_id(), tid, src, dst, ts)

    store.apply([ev(a, "CREATED", "READY", t0), ev(a, "READY", "RUNNING", t0 + 1)])
    store.apply([ev(a, "RUNNING", "RUN_DONE", t0 - 5)])  # in a later batch: behind the stored state time
    one_batch = [ev(b, "CREATED", "READY", t0), ev(b, "READY", "RUNNING", t0 + 1), ev(b, "RUNNING", "RUN_DONE", t0 - 5)]
    store.apply(one_batch)
    for tid in (a, b):
        hist = store.history(tid)
        assert [e.to_state for e in hist] == ["READY", "RUNNING", "RUN_DONE"]
        assert hist[2].ts == hist[2].since == t0 + 1
        assert store.task(tid).state == "RUN_DONE"


def test_batch_is_all_or_nothing(store: Store) -> None:
    a, b = store.create_tasks([TaskSpec(name="a"), TaskSpec(name="b")])
    ops = [
        Transition(store.new_id(), a, "CREATED", "READY", time.time()),
        Transition(store.new_id(), b, "CREATED", "FINISHED", time.time()),  # illegal
    ]
    with pytest.raises(IllegalTransition, match="CREATED -> FINISHED"):
        store.apply(ops)
    assert store.task(a).state == "CREATED" and store.history(a) == []
    with pytest.raises(UnknownTask, match="no task with id 12345"):
        store.apply([NewTask(store.new_id(), "x"), Transition(store.new_id(), 12345, None, "READY", 0.0)])
    assert store.count() == 2  # the new task in the rejected batch was not written


def _count_task_updates(store: Store) -> None:
    """A trigger that counts the UPDATE statements' rows on tasks (real SQLite / PostgreSQL)."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE task_updates (n INTEGER)")
        conn.exec_driver_sql("INSERT INTO task_updates VALUES (0)")
        if store.dialect == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER count_updates AFTER UPDATE ON tasks BEGIN UPDATE task_updates SET n = n + 1; END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION count_updates() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN UPDATE task_updates SET n = n + 1; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER count_updates AFTER UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION count_updates()"
            )


def _task_updates(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT n FROM task_updates").scalar_one())


def test_a_task_created_and_moved_in_one_batch_is_written_once(store: Store) -> None:
    _count_task_updates(store)
    a, b = NewTask(store.new_id(), "a", TaskSpec(name="a")), NewTask(store.new_id(), "b", TaskSpec(name="b"))
    t0 = time.time()
    store.apply([
        a, b,
        Transition(store.new_id(), a.id, "CREATED", "READY", t0),
        Transition(store.new_id(), b.id, "CREATED", "READY", t0 + 1),
        Transition(store.new_id(), a.id, "READY", "RUNNING", t0 + 2, attempt=1, worker="tcp://n1:1"),
    ])  # fmt: skip
    assert _task_updates(store) == 0  # both rows went in in their state after the batch
    ta, tb = store.task(a.id), store.task(b.id)
    assert (ta.state, ta.attempt, ta.updated_at) == ("RUNNING", 1, t0 + 2)
    assert (tb.state, tb.attempt, tb.updated_at) == ("READY", 0, t0 + 1)
    assert [(e.from_state, e.to_state) for e in store.history(a.id)] == [("CREATED", "READY"), ("READY", "RUNNING")]
    assert store.summary() == {"READY": 1, "RUNNING": 1}
    assert {tuple(sorted(x.counts.items())) for x in store.backlog()} == {(("READY", 1), ("RUNNING", 1))}
    store.apply([
        Transition(store.new_id(), a.id, "RUNNING", "RUN_DONE", t0 + 3, attempt=1),
        Transition(store.new_id(), a.id, "RUN_DONE", "FINISHED", t0 + 4, attempt=1),
    ])  # fmt: skip
    assert _task_updates(store) == 1  # a task already stored: one update per batch
    assert store.task(a.id).state == "FINISHED" and store.summary() == {"FINISHED": 1, "READY": 1}


def test_replay_writes_nothing_twice(store: Store) -> None:
    new = NewTask(store.new_id(), "k", TaskSpec(name="r"))
    ev = Transition(store.new_id(), new.id, "CREATED", "READY", time.time())
    batch = [new, ev]
    store.apply(batch)
    stats = store.apply(batch, replay=True)  # as after a commit whose answer was lost
    assert stats.skipped == 2 and stats.events == 0
    assert store.count() == 1 and len(store.history(new.id)) == 1
    assert store.summary() == {"READY": 1}


def test_backlog_by_shape(store: Store) -> None:
    specs = (
        [TaskSpec(resources=Resources.serial(1, walltime=50))] * 5
        + [TaskSpec(resources=Resources.serial(4, gpus=2, walltime=3000))] * 2
        + [TaskSpec(kind="mpi", resources=Resources(nodes=2, ranks_per_node=4))] * 3
    )
    ids = store.create_tasks(specs)
    _move(store, ids[0], "READY", "RUNNING")
    _move(store, ids[7], "READY")
    shapes = {(b.nodes, b.cores, b.gpus, b.walltime): b.counts for b in store.backlog()}
    assert shapes == {
        (1, 1, 0, 50.0): {"CREATED": 4, "RUNNING": 1},  # walltime classes: round values stay exact
        (1, 4, 2, 3000.0): {"CREATED": 2},
        (2, 4, 0, 0.0): {"CREATED": 2, "READY": 1},
    }
    assert store.summary() == {"CREATED": 8, "READY": 1, "RUNNING": 1}


def test_kill_requests(store: Store) -> None:
    ids = store.create_tasks([TaskSpec(tags={"g": "a"}), TaskSpec(tags={"g": "a"}), TaskSpec(tags={"g": "b"})])
    _move(store, ids[1], "KILLED")
    assert store.request_kill(tags={"g": "a"}) == 1  # the killed one is final
    assert store.kill_requests() == [ids[0]]
    assert store.request_kill(ids=[ids[2]]) == 1
    assert sorted(store.kill_requests()) == [ids[0], ids[2]]
    with pytest.raises(UnknownTask, match="no task with id 4242"):
        store.request_kill(ids=[ids[0], 4242])
    with pytest.raises(InvalidTags, match="tag name 'bad key'"):
        store.request_kill(tags={"bad key": 1})
    with pytest.raises(InvalidSpec, match="needs ids"):
        store.request_kill()


def test_allocations(store: Store) -> None:
    aid = store.add_allocation(system="slurm", nodes=4, walltime=600, queue="debug", state="QUEUED")
    store.update_allocation(aid, scheduler_id="1234", state="RUNNING", started_at=time.time())
    (a,) = store.allocations()
    assert (a.id, a.system, a.nodes, a.scheduler_id, a.state, a.queue) == (aid, "slurm", 4, "1234", "RUNNING", "debug")
    assert store.allocations(state="QUEUED") == []
    with pytest.raises(UnknownTask, match="no allocation"):
        store.update_allocation(77, state="X")


def test_claim_takes_tasks_of_dead_sessions(store_url: str) -> None:
    code = (
        "import sys; from balsam_dask.store import Store, NewTask; from balsam_dask.spec import TaskSpec\n"
        "s = Store(sys.argv[1]); ids = [s.new_id() for _ in range(6)]\n"
        "s.create_tasks([NewTask(i, f'k{i}', TaskSpec(), payload=b'p') for i in ids[:5]] + [NewTask(ids[5], 'np')])\n"
        "print(s.session_id)\n"
    )
    # the writing process exits without closing its session: it looks like a crash
    out = subprocess.run([sys.executable, "-c", code, store_url], capture_output=True, text=True, check=True)
    dead_session = int(out.stdout.strip())
    a, b = Store(store_url), Store(store_url)
    try:
        assert dead_session in a.dead_sessions()
        got_a = a.claim(limit=3)
        got_b = b.claim()
        assert len(got_a) == 3 and len(got_b) == 2  # the task without payload is not durable
        assert not {t.id for t in got_a} & {t.id for t in got_b}
        assert {t.session_id for t in got_a} == {a.session_id}
        assert a.claim() == []  # b's session is alive: nothing to take
    finally:
        a.close()
        b.close()


def test_bad_urls(tmp_path: object) -> None:
    with pytest.raises(InvalidStoreURL, match="uses 'mysql', which is not supported; use sqlite:///"):
        Store("mysql://root@localhost/x")
    with pytest.raises(InvalidStoreURL, match="in-memory SQLite"):
        Store("sqlite://")
    with pytest.raises(InvalidStoreURL, match="malformed"):
        Store("http:/x:y")
    with pytest.raises(StoreUnavailable, match="directory /nonexistent/dir does not exist"):
        Store("/nonexistent/dir/balsam.db")
    unreachable = r"cannot reach the store at postgresql://u:\*\*\*@127.0.0.1:1/db: .*refused"
    with pytest.raises(StoreUnavailable, match=unreachable):
        Store("postgresql://u:secret@127.0.0.1:1/db")
    missing = f"{tmp_path}/none.db"
    with pytest.raises(SchemaMissing, match="balsam-dask init"):
        Store(missing, create=False)
    assert not os.path.exists(missing)  # nothing written


def test_url_from_environment(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_DASK_STORE", f"{tmp_path}/env.db")
    s = Store()
    try:
        assert s.url.database == f"{tmp_path}/env.db"
    finally:
        s.close()
    monkeypatch.delenv("BALSAM_DASK_STORE")
    import dask.config

    with dask.config.set({"balsam-dask.store": f"sqlite:///{tmp_path}/cfg.db"}):
        s = Store()
        try:
            assert s.url.database == f"{tmp_path}/cfg.db"
        finally:
            s.close()


def test_ids_are_unique_across_threads_and_sessions(store_url: str) -> None:
    """Ids come from a lock-free counter: threads drawing at once never get the same id,
    and two sessions of one store never collide."""
    import threading

    from balsam_dask.store.ids import SEQ_BITS, IdAllocator, session_of

    with Store(store_url) as a, Store(store_url) as b:
        got: list[list[int]] = [[] for _ in range(4)]

        def draw(out: list[int]) -> None:
            for _ in range(20000):
                out.append(a.ids.next())

        threads = [threading.Thread(target=draw, args=(g,)) for g in got]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = [i for g in got for i in g]
        assert len(set(ids)) == 80000
        assert {session_of(i) for i in ids} == {a.session_id}
        assert sorted(i & ((1 << SEQ_BITS) - 1) for i in ids) == list(range(1, 80001))  # no gap, no repeat
        assert session_of(b.new_id()) == b.session_id != a.session_id
    with pytest.raises(ValueError, match=r"session id 0 out of range 1..2\*\*23-1"):
        IdAllocator(0)


def test_an_sqlite_too_old_for_the_store_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An SQLite without ``UPDATE ... FROM ... RETURNING`` (RHEL 8's 3.26) is refused when the
    store opens, naming both versions and what to use, and no file is made."""
    import sqlite3

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 26, 0))
    want = r"this Python's SQLite is 3\.26\.0; a SQLite store needs 3\.35\.0 or newer: use a Python built .* PostgreSQL"
    with pytest.raises(StoreUnavailable, match=want):
        Store(f"sqlite:///{tmp_path}/old.db")
    assert not (tmp_path / "old.db").exists()
    check_sqlite_version((3, 35, 0))  # the oldest it takes
