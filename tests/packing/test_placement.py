"""The placement core: tables of scenarios plus hypothesis properties."""

from __future__ import annotations

import pickle
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balsam_dask.errors import BalsamDaskError, InvalidSpec, UnknownTask
from balsam_dask.packing.placer import (
    Assignment,
    NodeInfo,
    PlacementError,
    PlacementInvariantError,
    Placer,
)
from balsam_dask.spec import Resources, walltime_class


def serial(cores: int = 1, gpus: int = 0, walltime: float | None = None) -> Resources:
    return Resources.serial(cores, gpus, walltime)


def gang(nodes: int, walltime: float | None = None) -> Resources:
    return Resources(nodes=nodes, ranks_per_node=1, walltime=walltime)


def placer_with(nodes: Mapping[str, tuple[str, int, int, float | None]], backfill: bool = False) -> Placer:
    p = Placer(backfill=backfill)
    for name, (alloc, cores, gpus, end) in nodes.items():
        p.add_node(NodeInfo(name, alloc, cores, gpus, end))
    return p


def by_task(assignments: list[Assignment]) -> dict[object, Assignment]:
    return {a.task_id: a for a in assignments}


# ---------------------------------------------------------------------------- serial tasks
def test_best_fit_prefers_the_fullest_node_that_fits() -> None:
    p = placer_with({"a": ("j", 8, 0, None), "b": ("j", 8, 0, None), "c": ("j", 8, 0, None)})
    p.submit("six", serial(6))
    p.submit("three", serial(3))
    got = by_task(p.schedule(0))
    assert got["six"].nodes != got["three"].nodes
    p.submit("two", serial(2))
    (a,) = p.schedule(1)
    assert a.nodes == got["six"].nodes  # 2 free cores left there: the tightest fit
    p.check_invariants()


def test_a_task_runs_near_its_inputs_if_it_fits_there_else_where_it_fits_best() -> None:
    p = placer_with({"a": ("j", 4, 0, None), "b": ("j", 4, 0, None), "c": ("j", 4, 0, None)})
    p.submit("busy", serial(3))
    (first,) = p.schedule(0)
    full, other = first.nodes[0], next(n for n in "abc" if n != first.nodes[0])
    p.submit("near", serial(1), near=other)  # best fit would be the fuller node
    p.submit("too-big", serial(2), near=full)  # 1 core free there: best fit instead
    got = by_task(p.schedule(1))
    assert got["near"].nodes == (other,) and got["too-big"].nodes == (other,)  # 3 free, then 1
    p.submit("unknown", serial(1), near="nowhere")
    p.submit("gone", serial(1), near=other)
    p.remove_node(other)  # its tasks are lost; the preference of a waiting one is void
    got = by_task(p.schedule(2))
    assert got["unknown"].nodes == (full,) and got["gone"].nodes[0] != other
    p.check_invariants()


@pytest.mark.parametrize(
    ("submitted", "expected_order"),
    [
        ([("x", 0), ("y", 0), ("z", 0)], ["x", "y", "z"]),  # FIFO
        ([("x", 0), ("y", 5), ("z", 1)], ["y", "z", "x"]),  # priority first
        ([("x", 1), ("y", 0), ("z", 1)], ["x", "z", "y"]),  # FIFO within a priority
    ],
)
def test_priority_then_fifo(submitted: list[tuple[str, int]], expected_order: list[str]) -> None:
    p = placer_with({"n": ("j", 1, 0, None)})
    for tid, prio in submitted:
        p.submit(tid, serial(1), prio)
    order = []
    for t in range(3):
        (a,) = p.schedule(t)
        order.append(a.task_id)
        p.finished(a.task_id)
    assert order == expected_order


def test_no_head_of_line_blocking() -> None:
    p = placer_with({"n0": ("j", 4, 0, None)})
    p.submit("big", serial(8))  # fits no node
    p.submit("small", serial(2))
    assert [a.task_id for a in p.schedule(0)] == ["small"]
    assert p.waiting() == ["big"]
    assert "needs 8 cores" in (p.unplaceable("big") or "")


def test_gpu_ids_are_exact_and_returned() -> None:
    p = placer_with({"g": ("j", 8, 4, None)})
    for tid in "abc":
        p.submit(tid, serial(1, gpus=1 if tid != "c" else 2))
    got = by_task(p.schedule(0))
    ids = [g for a in got.values() for g in a.gpu_ids]
    assert sorted(ids) == ["0", "1", "2", "3"]
    assert p.node("g").free_gpus == ()
    p.finished("b")
    assert p.node("g").free_gpus == got["b"].gpu_ids
    p.check_invariants()


@pytest.mark.parametrize(
    ("remaining", "walltime", "placed"),
    [(100.0, 60.0, True), (100.0, 100.0, True), (100.0, 120.0, False), (100.0, None, True)],
)
def test_walltime_eligibility(remaining: float, walltime: float | None, placed: bool) -> None:
    p = placer_with({"n": ("j", 4, 0, 1000.0 + remaining)})
    p.submit("t", serial(1, walltime=walltime))
    assert bool(p.schedule(1000.0)) is placed
    if not placed:
        assert "longest remaining allocation time" in (p.unplaceable("t", now=1000.0) or "")
        p.add_node(NodeInfo("m", "k", 4, 0, 5000.0))
        assert [a.nodes for a in p.schedule(1000.0)] == [("m",)]


def test_walltime_classes_round_up_by_at_most_a_quarter() -> None:
    for value in (1.0, 9.3, 60.0, 61.0, 599.0, 3600.0, 7200.0, 1e5 + 1):
        c = walltime_class(value)
        assert c is not None and value <= c <= value * 1.25
    assert walltime_class(None) is None
    assert [walltime_class(v) for v in (60.0, 300.0, 1800.0, 3600.0)] == [60.0, 300.0, 1800.0, 3600.0]


def test_draining_node_takes_nothing_new() -> None:
    p = placer_with({"n": ("j", 4, 0, None)})
    p.submit("a", serial(1))
    p.schedule(0)
    p.set_draining("n")
    p.submit("b", serial(1))
    assert p.schedule(1) == []
    p.set_draining("n", False)
    assert [a.task_id for a in p.schedule(2)] == ["b"]


def test_remove_node_returns_lost_tasks_and_cancel_frees() -> None:
    p = placer_with({"n": ("j", 4, 0, None), "m": ("j", 4, 0, None)})
    for tid in range(3):
        p.submit(tid, serial(2))
    p.schedule(0)
    lost_node = p.running()[0].nodes[0]
    lost = p.remove_node(lost_node)
    assert 0 in lost and all(p.state(t) is None for t in lost)
    assert p.cancel(2) is True and p.cancel("nope") is False
    p.check_invariants()
    assert p.nodes() == ["m" if lost_node == "n" else "n"]


def test_errors_are_clear_and_pickle() -> None:
    p = placer_with({"n": ("j", 1, 0, None)})
    p.submit("t", serial(1))
    p.submit("w", serial(1))
    with pytest.raises(PlacementError, match="already submitted"):
        p.submit("t", serial(1))
    with pytest.raises(UnknownTask):
        p.finished("nope")
    with pytest.raises(PlacementError, match="use cancel"):
        p.finished("t")
    with pytest.raises(InvalidSpec, match="cores=0"):
        NodeInfo("n", "j", 0)
    with pytest.raises(InvalidSpec, match="priority"):
        p.submit("z", serial(1), priority="high")  # type: ignore[arg-type]
    for err in (PlacementError("x"), PlacementInvariantError("y")):
        assert isinstance(err, BalsamDaskError)
        assert str(pickle.loads(pickle.dumps(err))) == str(err)


# ---------------------------------------------------------------------------- gangs
def test_gang_takes_whole_nodes_of_one_allocation_leader_first() -> None:
    nodes = {f"a{i}": ("A", 4, 0, None) for i in range(3)} | {f"b{i}": ("B", 4, 0, None) for i in range(2)}
    p = placer_with(nodes)
    p.submit("g", gang(3))
    (a,) = p.schedule(0)
    assert a.nodes == ("a0", "a1", "a2") and a.gpu_ids == ()
    p.submit("g2", gang(3))  # B has only 2 nodes, A is busy: it waits for A
    assert p.schedule(1) == []
    assert p.unplaceable("g2") is None
    p.finished("g")
    assert [x.task_id for x in p.schedule(2)] == ["g2"]
    p.check_invariants()


def test_gang_wider_than_every_allocation_waits_with_a_reason() -> None:
    p = placer_with({f"n{i}": ("A", 4, 0, None) for i in range(3)})
    p.submit("wide", gang(4))  # must not raise: a larger allocation may still come
    p.submit("s", serial(1))
    assert [a.task_id for a in p.schedule(0)] == ["s"]
    assert p.max_gang_width() == 3
    assert "widest allocation has 3" in (p.unplaceable("wide") or "")
    for i in range(4):
        p.add_node(NodeInfo(f"m{i}", "B", 4))
    assert [a.task_id for a in p.schedule(1)] == ["wide"]


def test_gang_does_not_starve_behind_a_stream_of_small_tasks() -> None:
    p = placer_with({f"n{i}": ("A", 2, 0, None) for i in range(6)})
    seq = 0

    def feed(k: int) -> None:
        nonlocal seq
        for _ in range(k):
            p.submit(f"s{seq}", serial(1))
            seq += 1

    feed(12)
    assert len(p.schedule(0)) == 12  # every core busy
    p.submit("gang", gang(4))
    feed(50)
    p.schedule(0)
    reserved = p.reservations()["gang"]
    assert len(reserved) == 4
    started_at = None
    for t in range(1, 200):
        # every step: the oldest running task ends and two more small tasks arrive
        running = sorted((k for k in p.running() if k != "gang"), key=lambda k: int(str(k)[1:]))
        if started_at is None:
            for name in reserved:  # reserved nodes never get new tasks
                assert set(p.node(name).running) <= set(running)
        p.finished(running[0])
        feed(2)
        got = by_task(p.schedule(t))
        assert not any(a.nodes[0] in reserved for k, a in got.items() if k != "gang")
        if "gang" in got:
            started_at = t
            assert got["gang"].nodes == tuple(sorted(reserved))
            break
        p.check_invariants()
    # the gang starts once the 8 tasks that were running on its 4 nodes are done
    assert started_at is not None and started_at <= 12


def test_two_reservations_at_once() -> None:
    p = placer_with({f"n{i}": ("A", 1, 0, None) for i in range(8)})
    for i in range(8):
        p.submit(i, serial(1))
    p.schedule(0)
    p.submit("g2", gang(2))
    p.submit("g3", gang(3))
    p.schedule(0)
    res = p.reservations()
    assert len(res["g2"]) == 2 and len(res["g3"]) == 3 and not set(res["g2"]) & set(res["g3"])
    for i in range(8):
        p.finished(i)
    got = by_task(p.schedule(1))
    assert set(got) == {"g2", "g3"}


def test_reservation_released_when_its_node_drains_or_leaves() -> None:
    p = placer_with({f"n{i}": ("A", 1, 0, None) for i in range(3)})
    p.submit(0, serial(1))
    p.schedule(0)
    p.submit("g", gang(3))
    p.schedule(0)
    assert len(p.reservations()["g"]) == 3
    p.set_draining("n1")
    p.schedule(1)
    assert "needs 3 nodes" in (p.unplaceable("g") or "")
    p.check_invariants()


def test_removing_a_gang_node_loses_the_whole_gang() -> None:
    p = placer_with({f"n{i}": ("A", 2, 0, None) for i in range(3)})
    p.submit("g", gang(3))
    p.schedule(0)
    assert p.remove_node("n1") == ["g"]
    assert p.node("n0").free_cores == 2 and p.node("n2").running == ()
    p.check_invariants()


def test_backfill_lends_reserved_idle_nodes_only_until_the_promised_start() -> None:
    p = placer_with({f"n{i}": ("A", 1, 0, None) for i in range(2)}, backfill=True)
    p.submit("long", serial(1, walltime=1000.0))
    p.schedule(0)  # on one node until t=1000 at most
    p.submit("g", gang(2, walltime=100.0))
    p.schedule(0)  # reserves both nodes; the idle one is promised back by t=1000
    p.submit("too_long", serial(1, walltime=1800.0))
    p.submit("short", serial(1, walltime=600.0))
    got = by_task(p.schedule(10))
    assert set(got) == {"short"}
    p.check_invariants()
    p.finished("long")
    assert p.schedule(500) == []  # the gang waits for the backfilled task, as promised
    p.finished("short")
    assert [a.task_id for a in p.schedule(600)] == ["g"]


def test_waiting_head_moves_to_an_allocation_that_frees_up_whole() -> None:
    p = placer_with({f"{a}{i}": (a.upper(), 1, 0, None) for a in "ab" for i in range(4)})
    p.submit("g0", gang(3))
    p.submit("g1", gang(3))
    got = by_task(p.schedule(0))
    assert {got["g0"].nodes[0][0], got["g1"].nodes[0][0]} == {"a", "b"}  # one gang per allocation
    p.submit("wide", gang(4))
    assert p.schedule(1) == [] and len(p.reservations()["wide"]) == 1  # the head collects nodes
    p.finished("g1")  # g1's whole allocation is free now, g0's is still busy
    (a,) = p.schedule(2)
    assert a.task_id == "wide" and {n[0] for n in a.nodes} == {got["g1"].nodes[0][0]}
    p.check_invariants()


def test_backfill_never_borrows_a_reservation_that_is_ready() -> None:
    p = placer_with({"n0": ("A", 1, 0, None), "n1": ("A", 1, 0, None)}, backfill=True)
    p.submit("s", serial(1, walltime=1000.0))
    p.schedule(0)
    p.submit("g", gang(2, walltime=100.0))
    p.schedule(0)
    p.finished("s")  # g's nodes are all idle: it is ready
    p.submit("h", gang(2, walltime=500.0))  # would fit before g's promise (t=1000)
    assert [a.task_id for a in p.schedule(10)] == ["g"]
    p.check_invariants()


# ---------------------------------------------------------------------------- properties
_op = st.one_of(
    st.tuples(st.just("node"), st.sampled_from("ABC"), st.integers(1, 4), st.integers(0, 2),
              st.sampled_from([None, 50.0, 500.0])),
    st.tuples(st.just("task"), st.integers(1, 3), st.integers(0, 1), st.sampled_from([None, 10.0, 100.0]),
              st.integers(0, 2), st.integers(-1, 5)),  # the last: which node it prefers (-1: none)
    st.tuples(st.just("gang"), st.integers(2, 4), st.sampled_from([None, 10.0, 100.0])),
    st.tuples(st.just("finish"), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("remove"), st.integers(0, 50)),
    st.tuples(st.just("drain"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.floats(0.0, 30.0)),
)  # fmt: skip


def _fits_somewhere(p: Placer, res: Resources, now: float) -> bool:
    wt = walltime_class(res.walltime) or 0.0
    ok: dict[str, int] = {}
    for name in p.nodes():
        n = p.node(name)
        timely = n.end_time is None or n.end_time - now >= wt
        if not n.draining and timely and n.cores >= res.cores and n.gpus >= res.gpus:
            ok[n.alloc_id] = ok.get(n.alloc_id, 0) + 1
    return max(ok.values(), default=0) >= res.nodes


@pytest.mark.parametrize(("hold_after", "prefetch"), [(30.0, 0), (0.0, 0), (30.0, 2)])  # 0 s: hold every passed head
@pytest.mark.parametrize("backfill", [False, True])
@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_op, max_size=60))
def test_random_operations_keep_every_invariant(ops: list[tuple], backfill: bool, hold_after: float,
                                                prefetch: int) -> None:  # fmt: skip
    p = Placer(backfill=backfill, hold_after=hold_after, prefetch=prefetch)
    now = 0.0
    specs: dict[int, Resources] = {}
    serial_ids: set[int] = set()
    for count, op in enumerate(ops):
        kind = op[0]
        if kind == "node":
            _, alloc, cores, gpus, left = op
            p.add_node(NodeInfo(f"{alloc}{count}", alloc, cores, gpus, None if left is None else now + left))
        elif kind in ("task", "gang"):
            res = serial(op[1], op[2], op[3]) if kind == "task" else gang(op[1], op[2])
            names = sorted(p.nodes())
            near = names[op[5] % len(names)] if kind == "task" and op[5] >= 0 and names else None
            p.submit(count, res, op[4] if kind == "task" else 0, near)
            specs[count] = res
            if kind == "task":
                serial_ids.add(count)
        elif kind in ("finish", "cancel"):
            pool = sorted(p.running(), key=str) if kind == "finish" else sorted(specs, key=str)
            pool = [t for t in pool if p.state(t) is not None]
            if pool:
                target = pool[op[1] % len(pool)]
                p.finished(target) if kind == "finish" else p.cancel(target)
        elif kind in ("remove", "drain") and p.nodes():
            name = sorted(p.nodes())[op[1] % len(p.nodes())]
            if kind == "remove":
                assert all(p.state(t) is None for t in p.remove_node(name))
            else:
                p.set_draining(name, not p.node(name).draining)
        elif kind == "tick":
            now += op[1]
        reserved_before = {n: p.node(n).reserved_by for n in p.nodes()}
        for a in p.schedule(now):
            infos = [p.node(n) for n in a.nodes]
            res = specs[a.task_id]  # type: ignore[index]
            assert len({i.alloc_id for i in infos}) == 1 and len(a.nodes) == res.nodes
            wt = walltime_class(res.walltime) or 0.0
            assert all(i.end_time is None or i.end_time - now >= wt for i in infos)
            assert not any(i.draining for i in infos)
            if a.task_id in serial_ids and not backfill:
                assert reserved_before.get(a.nodes[0]) is None and infos[0].reserved_by is None
            if res.gpus:
                assert len(set(a.gpu_ids)) == res.gpus
        p.check_invariants()
    # drain: with time frozen, every task that fits some node eventually runs
    for _ in range(200):
        for tid in list(p.running()):
            p.finished(tid)
        p.check_invariants()
        if not p.schedule(now) and not p.running():
            break
    for tid in p.waiting():
        assert not _fits_somewhere(p, specs[tid], now), f"task {tid} ({specs[tid]}) fits but never ran"  # type: ignore[index]


def test_a_node_whose_allocation_has_ended_takes_no_task_even_without_walltime() -> None:
    # found by the property test: a task without a walltime estimate went to an expired node
    p = placer_with({**{f"n{i}": ("A", 1, 0, None) for i in range(3)}, "old": ("A", 1, 0, 50.0)})
    for tid in range(4):
        p.submit(tid, serial())
    placed = by_task(p.schedule(51.0))
    assert sorted(a.nodes[0] for a in placed.values()) == ["n0", "n1", "n2"]
    assert p.waiting() == [3]
    p.check_invariants()
