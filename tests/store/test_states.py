"""Every legal and illegal state pair: in the pure table and through a real store."""

from __future__ import annotations

import itertools
import time
from collections import deque

import pytest

from balsam_dask.errors import IllegalTransition
from balsam_dask.spec import TaskSpec
from balsam_dask.store import Store, Transition
from balsam_dask.store.states import ALL_STATES, allowed_from, check_transition, illegal, is_legal

# Written out independently of the implementation: changing the state machine must
# change this table too.
EXPECTED: dict[str | None, set[str]] = {
    None: {"CREATED"},
    "CREATED": {"AWAITING_PARENTS", "READY", "FAILED", "KILLED"},
    "AWAITING_PARENTS": {"READY", "FAILED", "KILLED"},
    "READY": {"RUNNING", "AWAITING_PARENTS", "FAILED", "KILLED"},
    "RUNNING": {"RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT", "RESTART_READY", "FAILED", "KILLED"},
    "RUN_DONE": {"FINISHED", "RESTART_READY", "KILLED"},
    "RUN_ERROR": {"RESTART_READY", "FAILED", "KILLED"},
    "RUN_TIMEOUT": {"RESTART_READY", "FAILED", "KILLED"},
    "RESTART_READY": {"RUNNING", "AWAITING_PARENTS", "READY", "FAILED", "KILLED"},
    "FINISHED": {"RESTART_READY", "FINISHED"},  # FINISHED -> FINISHED: a lost result restored
    "FAILED": {"RESTART_READY"},
    "KILLED": set(),
}
PAIRS = [(a, b) for a in [None, *ALL_STATES] for b in ALL_STATES]


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_every_pair_in_the_table(src: str | None, dst: str) -> None:
    legal = dst in EXPECTED[src]
    assert is_legal(src, dst) is legal
    if legal:
        check_transition(src, dst)
    else:
        with pytest.raises(IllegalTransition, match=f"illegal transition {src} -> {dst}"):
            check_transition(src, dst, task_id=7)


def test_table_covers_every_state() -> None:
    assert set(EXPECTED) == {None, *ALL_STATES}
    for s in ALL_STATES:
        assert allowed_from(s) == frozenset(EXPECTED[s])


def test_unknown_state_message() -> None:
    with pytest.raises(IllegalTransition, match=r"unknown state 'DONE'.*states are: CREATED"):
        check_transition("RUNNING", "DONE")


def test_illegal_transition_pickles() -> None:
    import pickle

    e = illegal("KILLED", "RUNNING", 5)
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.task_id == 5 and "allowed states are: none (final state)" in str(e2)


def _path_to(target: str) -> list[str]:
    """Shortest legal path of states from CREATED to target."""
    prev: dict[str, str | None] = {"CREATED": None}
    q = deque(["CREATED"])
    while q:
        s = q.popleft()
        for n in sorted(EXPECTED[s]):
            if n not in prev:
                prev[n] = s
                q.append(n)
    path = [target]
    while prev[path[-1]] is not None:
        path.append(prev[path[-1]])  # type: ignore[arg-type]
    return path[::-1]


def test_every_pair_through_the_store(store: Store) -> None:
    pairs = [(a, b) for a in ALL_STATES for b in ALL_STATES]
    ids = store.create_tasks([TaskSpec(name=f"{a}->{b}") for a, b in pairs])
    setup = []
    for tid, (a, _) in zip(ids, pairs, strict=True):
        path = _path_to(a)
        for x, y in itertools.pairwise(path):
            setup.append(Transition(store.new_id(), tid, x, y, time.time()))
    store.apply(setup)
    for tid, (a, b) in zip(ids, pairs, strict=True):
        assert store.task(tid).state == a
        op = Transition(store.new_id(), tid, a, b, time.time(), message="probe")
        if b in EXPECTED[a]:
            store.apply([op])
            assert store.task(tid).state == b
            assert store.history(tid)[-1].to_state == b
        else:
            n_events = len(store.history(tid))
            with pytest.raises(IllegalTransition, match=f"{a} -> {b} for task {tid}"):
                store.apply([op])
            assert store.task(tid).state == a
            assert len(store.history(tid)) == n_events
    kept = store.summary()
    store.rebuild_counts()  # the counters kept in step with every write match a recount
    assert store.summary() == kept
    assert sum(kept.values()) == len(pairs)
