"""Holds: a wide serial task is not starved by a stream of narrower ones (placement_holds)."""

from __future__ import annotations

import pytest

from balsam_dask.errors import InvalidSpec
from balsam_dask.packing.placer import NodeInfo, Placer
from balsam_dask.spec import Resources

WIDE = 1000


def stream(hold_after: float | None, rounds: int = 200, dt: float = 1.0) -> tuple[int | None, Placer, list[str]]:
    """Two 4-core nodes full of 1-core tasks, a 4-core task arrives, then each second one
    1-core task ends and another arrives. Returns the round the wide task started in (None:
    never), the placer and where it started."""
    p = Placer(hold_after=hold_after)
    for n in ("a", "b"):
        p.add_node(NodeInfo(n, "al", cores=4))
    for tid in range(1, 9):
        p.submit(tid, Resources.serial(1), 0)
    now = 0.0
    running = [a.task_id for a in p.schedule(now)]
    assert len(running) == 8
    p.submit(WIDE, Resources.serial(4), 0)
    nxt = 9
    for step in range(rounds):
        now += dt
        p.finished(running.pop(0))
        p.submit(nxt, Resources.serial(1), 0)
        nxt += 1
        for a in p.schedule(now):
            if a.task_id == WIDE:
                p.check_invariants()
                return step, p, list(a.nodes)
            running.append(a.task_id)
        p.check_invariants()
        if p.held():  # a node kept for the wide task takes no new task
            (held,) = (p.node(n) for n in p.held().values())
            assert WIDE not in held.running and held.free_cores < 4  # only 1-core tasks run there
    return None, p, []


def test_without_holds_a_wide_task_starves_behind_a_stream_of_narrow_ones() -> None:
    step, _, _ = stream(hold_after=None)
    assert step is None


def test_a_held_node_drains_and_the_wide_task_starts_there() -> None:
    step, p, nodes = stream(hold_after=10.0)
    assert step is not None
    # passed from round 0; held from round 10; the held node's four 1-core tasks end by round ~18
    assert 10 <= step <= 20, step
    assert p.node(nodes[0]).free_cores == 0 and p.held() == {}


def test_no_hold_before_hold_after_seconds_of_being_passed() -> None:
    step, _, _ = stream(hold_after=50.0, rounds=40)
    assert step is None


def test_a_cancelled_held_task_gives_its_node_back() -> None:
    p = Placer(hold_after=0.0)
    p.add_node(NodeInfo("a", "al", cores=2))
    p.submit(1, Resources.serial(1))
    assert [a.task_id for a in p.schedule(0.0)] == [1]
    p.submit(WIDE, Resources.serial(2))
    p.submit(2, Resources.serial(1))
    assert [a.task_id for a in p.schedule(1.0)] == [2]  # passes the wide head: a hold follows
    assert set(p.held()) == {WIDE}
    p.finished(1)
    p.submit(3, Resources.serial(1))
    assert p.schedule(2.0) == []  # the held node takes nothing; 2 still runs there
    p.cancel(WIDE)
    p.check_invariants()
    assert [a.task_id for a in p.schedule(3.0)] == [3]


def test_a_held_task_that_starts_elsewhere_frees_the_held_node() -> None:
    p = Placer(hold_after=0.0)
    for n in ("a", "b"):
        p.add_node(NodeInfo(n, "al", cores=2))
    for tid in (1, 2, 3, 4):
        p.submit(tid, Resources.serial(1))
    assert len(p.schedule(0.0)) == 4
    p.submit(WIDE, Resources.serial(2))
    p.finished(1)
    p.submit(5, Resources.serial(1))
    assert [a.task_id for a in p.schedule(1.0)] == [5]  # passes the wide head: a hold follows
    (held,) = list(p.held().values())
    other = "b" if held == "a" else "a"
    for tid in p.node(other).running:  # the other node empties first
        p.finished(tid)
    got = {a.task_id: a.nodes for a in p.schedule(2.0)}
    assert got == {WIDE: (other,)}
    assert p.held() == {}
    p.check_invariants()
    assert p.node(held).free_cores == 0
    p.finished(p.node(held).running[0])
    p.submit(6, Resources.serial(1))
    assert {a.task_id: a.nodes for a in p.schedule(3.0)} == {6: (held,)}  # takes tasks again


def test_hold_after_is_checked() -> None:
    with pytest.raises(InvalidSpec, match=r"hold_after=-1 is invalid: use seconds >= 0 or None, e.g. hold_after=30"):
        Placer(hold_after=-1)
    with pytest.raises(InvalidSpec, match=r"hold_after='30' is invalid"):
        Placer(hold_after="30")  # type: ignore[arg-type]
