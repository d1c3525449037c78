"""Nodes' busy stretches kept by the writer (``store/busy.py``): their union is the union of the
runs whatever the order and batching of the events, two writers at once, a removal; a report
read from them equals one read from every run."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import text

from balsam_dask.spec import TaskSpec
from balsam_dask.store import NewTask, Store, Transition
from balsam_dask.store.busy import merged

B = 1_700_000_000.0


def test_merged_is_the_union_per_worker() -> None:
    runs = [("b", 5.0, 6.0), ("a", 3.0, 4.0), ("a", 0.0, 2.0), ("a", 2.0, 2.5), ("a", 1.0, 1.5), ("b", 1.0, 2.0)]
    assert merged(runs) == [("a", 0.0, 2.5), ("a", 3.0, 4.0), ("b", 1.0, 2.0), ("b", 5.0, 6.0)]
    assert merged([]) == []


def stored(store: Store) -> list[tuple[str, float, float]]:
    """The stored stretches, merged (writers may leave overlapping ones)."""
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT worker, started, ended FROM node_busy")).all()
    return merged((w, s, e) for w, s, e in rows)


def random_run(store: Store, seed: int, writers: list[Store]) -> list[tuple[str, float, float]]:
    """Tasks run on 3 nodes with random overlaps and gaps, their events written in random
    batches by ``writers`` in turn (a run's end may come before its neighbours' starts, and some
    ends name no worker); the runs, as (worker, start, end)."""
    rng = random.Random(seed)
    n = 60
    ids = store.create_tasks([NewTask(0, f"k{i}", TaskSpec(name="sim"), created_at=B) for i in range(n)])
    runs: list[tuple[str, float, float]] = []
    per_task = []
    for tid in ids:
        ops, at, frm = [Transition(store.new_id(), tid, "CREATED", "READY", B)], B, "READY"
        for attempt in (1, 2) if rng.random() < 0.3 else (1,):
            w = f"node-{rng.randrange(3)}"
            s = B + rng.uniform(0, 300) if attempt == 1 else at + rng.uniform(0, 5)
            e = s + rng.choice([0.0, rng.uniform(0.1, 20)])
            named = w if rng.random() < 0.8 else None
            ops.append(Transition(store.new_id(), tid, frm, "RUNNING", s, attempt, w))
            end = "RUN_ERROR" if attempt == 1 and frm == "READY" and rng.random() < 0.5 else "RUN_DONE"
            ops.append(Transition(store.new_id(), tid, "RUNNING", end, e, attempt, named))
            runs.append((w, s, e))
            at, frm = e, end
            if end == "RUN_DONE":
                ops.append(Transition(store.new_id(), tid, "RUN_DONE", "FINISHED", e, attempt))
                break
            ops.append(Transition(store.new_id(), tid, "RUN_ERROR", "RESTART_READY", e, attempt))
            frm = "RESTART_READY"
        per_task.append(ops)
    # write: each task's events in order, tasks interleaved, cut into random batches
    cursors = [0] * n
    pending = [i for i in range(n)]
    batch: list[Transition] = []
    turn = 0
    while pending:
        i = rng.choice(pending)
        take = rng.randint(1, 3)
        batch += per_task[i][cursors[i] : cursors[i] + take]
        cursors[i] += take
        if cursors[i] >= len(per_task[i]):
            pending.remove(i)
        if len(batch) > rng.randint(1, 25) or not pending:
            writers[turn % len(writers)].apply(batch)
            turn += 1
            batch = []
    return runs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_stretches_are_the_union_of_the_runs(store: Store, seed: int) -> None:
    runs = random_run(store, seed, [store])
    assert stored(store) == merged(runs)


def test_two_writers_at_once_leave_the_same_union(store_url: str) -> None:
    with Store(store_url) as a, Store(store_url) as b:
        runs = random_run(a, 7, [a, b])
        assert stored(a) == merged(runs)


def test_a_report_from_the_stretches_equals_one_from_every_run(store: Store) -> None:
    """The unfiltered report reads the stretches; one filtered by a tag every task has reads
    every run (the stretches cannot tell tasks apart): their busy nodes are the same."""
    random_run(store, 4, [store])
    with store.engine.begin() as conn:  # a task running now, and every task tagged
        conn.execute(text('UPDATE tasks SET tags = \'{"exp": "a"}\''))
    tid = store.create_tasks([NewTask(0, "now", TaskSpec(name="sim", tags={"exp": "a"}), created_at=B)])[0]
    store.apply([Transition(store.new_id(), tid, "CREATED", "READY", B + 50),
                 Transition(store.new_id(), tid, "READY", "RUNNING", B + 100, 1, "node-1")])  # fmt: skip
    for window in ({}, {"since": B + 40, "until": B + 200}):
        everything = store.report(interval=7, **window)  # type: ignore[arg-type]
        tagged = store.report(interval=7, tags={"exp": "a"}, **window)  # type: ignore[arg-type]
        assert list(everything.utilization["busy_nodes"]) == pytest.approx(list(tagged.utilization["busy_nodes"]))
        assert everything.utilization["busy_nodes"].max() > 1


def test_removing_tasks_takes_their_runs_out_of_the_stretches(store: Store) -> None:
    """Two runs on node-0 make one stretch 0-30; removing the task of the second leaves 0-10."""
    a, b = store.create_tasks([NewTask(0, f"k{i}", TaskSpec(name="sim"), created_at=B) for i in range(2)])
    steps = [(a, "CREATED", "READY", 0, 0, None), (a, "READY", "RUNNING", 0, 1, "node-0"),
             (a, "RUNNING", "RUN_DONE", 10, 1, "node-0"), (a, "RUN_DONE", "FINISHED", 10, 1, None),
             (b, "CREATED", "READY", 0, 0, None), (b, "READY", "RUNNING", 5, 1, "node-0"),
             (b, "RUNNING", "RUN_DONE", 30, 1, "node-0"), (b, "RUN_DONE", "FINISHED", 30, 1, None)]  # fmt: skip
    store.apply([Transition(store.new_id(), t, frm, to, B + at, att, w) for t, frm, to, at, att, w in steps])
    assert stored(store) == [("node-0", B, B + 30)]
    assert store.remove_tasks(ids=[b]).done == 1
    assert stored(store) == [("node-0", B, B + 10)]
    r = store.report(since=B, until=B + 40, interval=10)
    assert list(r.utilization["busy_nodes"]) == pytest.approx([1, 0, 0, 0])
