"""Prefetch: queued tasks on full nodes, promoted exactly as a worker starts them (placement_prefetch)."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balsam_dask.errors import InvalidSpec
from balsam_dask.packing.placer import Assignment, NodeInfo, Placer
from balsam_dask.spec import Resources


def placer(nodes: dict[str, int], prefetch: int = 2, **kw: object) -> Placer:
    p = Placer(prefetch=prefetch, **kw)  # type: ignore[arg-type]
    for name, cores in nodes.items():
        p.add_node(NodeInfo(name, "A", cores))
    return p


def submit(p: Placer, ids: range, cores: int = 1, priority: int = 0, **kw: object) -> None:
    for tid in ids:
        p.submit(tid, Resources.serial(cores, **kw), priority)  # type: ignore[arg-type]


def split(out: list[Assignment]) -> tuple[dict[Hashable, str], dict[Hashable, str]]:
    direct = {a.task_id: a.nodes[0] for a in out if not a.queued}
    queued = {a.task_id: a.nodes[0] for a in out if a.queued}
    return direct, queued


def test_full_nodes_queue_tasks_only_while_the_backlog_is_deep() -> None:
    p = placer({"a": 1, "b": 1})
    submit(p, range(10))
    direct, queued = split(p.schedule(0.0))
    assert direct == {0: "a", 1: "b"} or direct == {0: "b", 1: "a"}
    assert len(queued) == 4 and sorted(queued) == [2, 3, 4, 5]
    assert {n: len(p.node(n).queued) for n in "ab"} == {"a": 2, "b": 2}
    assert p.state(2) == "queued" and len(p.waiting()) == 4
    p.check_invariants()
    # with only as many waiting tasks as nodes, nothing more is queued
    q = placer({"a": 1, "b": 1})
    submit(q, range(4))
    direct, queued = split(q.schedule(0.0))
    assert len(direct) == 2 and not queued


def test_prefetch_is_off_by_default_and_bad_values_are_refused() -> None:
    p = placer({"a": 1}, prefetch=0)
    submit(p, range(10))
    assert split(p.schedule(0.0))[1] == {}
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(InvalidSpec, match=r"prefetch=.* is invalid: give an integer >= 0"):
            Placer(prefetch=bad)  # type: ignore[arg-type]


def test_freeing_cores_promotes_the_queued_tasks_in_queue_order() -> None:
    p = placer({"a": 2})
    submit(p, range(8))
    direct, queued = split(p.schedule(0.0))
    assert sorted(direct) == [0, 1] and list(p.node("a").queued) == [2, 3]
    p.finished(0)
    assert p.take_started() == [2] and p.take_started() == []
    assert p.state(2) == "running" and p.node("a").free_cores == 0
    # the node has room again: the next waiting task is queued behind 3
    _, queued = split(p.schedule(1.0))
    assert queued == {4: "a"} and list(p.node("a").queued) == [3, 4]
    p.cancel(1)  # cancelling a running task frees its cores the same way
    assert p.take_started() == [3]
    p.cancel(4)  # a queued task can be withdrawn
    assert list(p.node("a").queued) == [] and p.state(4) is None
    p.check_invariants()


def test_a_seceded_task_gives_its_cores_back_and_keeps_its_gpus_and_its_node() -> None:
    """secede(): the node's cores go to other tasks (its queued ones start), the task's GPU
    stays with it until it ends, and its end frees no cores twice."""
    p = Placer(prefetch=2)
    p.add_node(NodeInfo("a", "A", 2, gpus=1))
    p.submit("gpu", Resources.serial(2, 1), 0)
    (first,) = p.schedule(0.0)
    submit(p, range(6))
    p.schedule(1.0)
    assert list(p.node("a").queued) == [0, 1]
    assert p.release_cores("gpu") and not p.release_cores("gpu")
    assert p.take_started() == [0, 1]
    status = p.node("a")
    assert status.free_cores == 0 and status.free_gpus == () and set(status.running) == {"gpu", 0, 1}
    assert not p.releasable("a")
    assert p.backlog_counts()[(1, 2, 1, None)] == (0, 1)  # the shape it asked for
    p.check_invariants()
    p.finished("gpu")
    assert p.node("a").free_cores == 0 and p.node("a").free_gpus == first.gpu_ids
    p.finished(0)
    assert p.take_started() == [] and p.node("a").free_cores == 1
    assert not p.release_cores("gpu") and not p.release_cores(2)  # gone; waiting
    p.check_invariants()


def test_only_tasks_that_start_on_any_freed_core_are_queued() -> None:
    # 2-core tasks on 4-core nodes could wait behind free cores: never queued
    p = placer({"a": 4})
    submit(p, range(6), cores=2)
    assert split(p.schedule(0.0))[1] == {}
    # whole-node tasks behind one whole-node task are
    p = placer({"a": 4})
    submit(p, range(6), cores=4)
    direct, queued = split(p.schedule(0.0))
    assert direct == {0: "a"} and queued == {1: "a", 2: "a"}
    # ...but never behind a queued 1-core task: it would wait with a core free
    p = placer({"a": 2})
    p.submit("w1", Resources.serial(2))
    p.schedule(0.0)
    p.submit("one", Resources.serial(1))
    submit(p, range(4), cores=2)
    _, queued = split(p.schedule(1.0))
    assert queued == {"one": "a"}
    p.finished("w1")
    assert p.take_started() == ["one"] and p.node("a").free_cores == 1
    p.check_invariants()
    # GPU tasks never are
    p = Placer(prefetch=2)
    p.add_node(NodeInfo("g", "A", 1, gpus=1))
    submit(p, range(6), gpus=1)
    assert split(p.schedule(0.0))[1] == {}


def test_an_idle_node_takes_queued_tasks_back_from_a_busy_one() -> None:
    p = placer({"a": 1, "b": 1})
    submit(p, range(10))
    direct, queued = split(p.schedule(0.0))  # one runs and two are queued on each node
    on_b = [t for t, n in {**direct, **queued}.items() if n == "b"]
    for tid in p.waiting():
        p.cancel(tid)  # nothing waits any more
    for tid in on_b:  # b works through its queue and is left idle
        p.finished(tid)
        assert p.take_started() == on_b[on_b.index(tid) + 1 : on_b.index(tid) + 2]
    assert p.node("b").free_cores == 1 and len(p.node("a").queued) == 2
    p.schedule(1.0)
    steals = p.take_steals()
    last_on_a = p.node("a").queued[-1]
    assert steals == [(last_on_a, "a")]  # the one that would start last; one per free slot
    assert p.take_steals() == []  # each is asked for once
    p.cancel(last_on_a)  # the worker gave it back: the plugin withdraws and resubmits it
    p.submit(last_on_a, Resources.serial(1))
    direct, _ = split(p.schedule(1.1))
    assert direct == {last_on_a: "b"}
    p.check_invariants()


def test_a_refused_steal_is_promoted_as_usual_and_asked_again_only_for_a_new_reason() -> None:
    p = placer({"a": 1, "b": 1})
    submit(p, range(6))
    p.schedule(0.0)
    p.set_draining("a")  # a's queued tasks must go elsewhere
    p.schedule(1.0)
    steals = dict(p.take_steals())
    assert set(steals.values()) == {"a"} and len(steals) == 2
    for tid in steals:
        p.steal_refused(tid)  # the worker had started them: it ran ahead of the placer
    p.check_invariants()
    p.schedule(2.0)
    assert p.take_steals() == []  # not asked again on its own
    (running,) = p.node("a").running
    p.finished(running)
    assert p.take_started() == [p.node("a").running[0]] and p.state(p.node("a").running[0]) == "running"
    p.set_draining("a", False)
    p.set_draining("a")
    p.schedule(3.0)
    assert [n for _, n in p.take_steals()] == ["a"]  # a new reason: asked again


def test_a_gang_reservation_takes_back_the_queued_tasks_of_its_nodes() -> None:
    p = placer({"a": 1, "b": 1})
    submit(p, range(8))
    p.schedule(0.0)
    p.submit("g", Resources(nodes=2, ranks_per_node=1))
    p.schedule(1.0)
    steals = p.take_steals()
    assert {n for _, n in steals} == {"a", "b"} and len(steals) == 4
    for tid, _ in steals:
        p.cancel(tid)
    for tid in list(p.running()):
        p.finished(tid)
    assert [a.task_id for a in p.schedule(2.0)] == ["g"]
    p.check_invariants()


def test_a_higher_priority_arrival_takes_back_lower_priority_queued_tasks() -> None:
    p = placer({"a": 1})
    submit(p, range(6))
    p.schedule(0.0)
    assert list(p.node("a").queued) == [1, 2]
    p.submit("urgent", Resources.serial(1), 10)
    p.schedule(1.0)
    assert sorted(t for t, _ in p.take_steals()) == [1, 2]


# ---------------------------------------------------------------------------- worker mirror
class Worker:
    """A node-worker as Dask runs it with a cores resource: tasks arrive in dispatch order
    and each starts when its cores are free, the lowest dispatch number first, with the
    head blocking the rest."""

    def __init__(self, cores: int) -> None:
        self.free = cores
        self.pending: deque[tuple[Hashable, int]] = deque()
        self.running: dict[Hashable, int] = {}

    def arrive(self, tid: Hashable, cores: int) -> None:
        self.pending.append((tid, cores))
        self.start()

    def start(self) -> None:
        while self.pending and self.pending[0][1] <= self.free:
            tid, cores = self.pending.popleft()
            self.free -= cores
            self.running[tid] = cores

    def finish(self, tid: Hashable) -> None:
        self.free += self.running.pop(tid)
        self.start()

    def secede(self, tid: Hashable) -> None:
        """The task left the thread pool: it runs on holding no cores (balsam_dask.seceded)."""
        self.free += self.running[tid]
        self.running[tid] = 0
        self.start()

    def give_back(self, tid: Hashable) -> bool:
        for item in self.pending:
            if item[0] == tid:
                self.pending.remove(item)
                return True
        return False


_op = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from([1, 1, 1, 2, 4]), st.integers(1, 10), st.integers(0, 2)),
    st.tuples(st.just("finish"), st.integers(0, 100)),
    st.tuples(st.just("drain"), st.integers(0, 3)),
    st.tuples(st.just("steal"), st.booleans()),
    st.tuples(st.just("secede"), st.integers(0, 100)),
)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(_op, max_size=80), depth=st.integers(1, 3))
def test_the_placer_always_agrees_with_the_workers_on_what_runs(ops: list[tuple], depth: int) -> None:
    """Random submits, completions, drains, steal answers and seceding tasks: after every step
    the placer's running tasks on each node are exactly those the worker model runs."""
    shapes = {"n0": 1, "n1": 4, "n2": 4, "n3": 2}
    p = Placer(prefetch=depth)
    workers = {n: Worker(c) for n, c in shapes.items()}
    for n, c in shapes.items():
        p.add_node(NodeInfo(n, "A", c))
    cores: dict[Hashable, int] = {}
    steals: list[tuple[Hashable, str]] = []
    nxt = 0
    now = 0.0

    def dispatch() -> None:
        for a in p.schedule(now):
            assert a.queued or p.node(a.nodes[0]).free_cores >= 0
            workers[a.nodes[0]].arrive(a.task_id, cores[a.task_id])
        p.take_started()
        steals.extend(p.take_steals())

    for op in ops:
        now += 0.1
        if op[0] == "submit":
            _, c, count, prio = op
            for _ in range(count):
                cores[nxt] = c
                p.submit(nxt, Resources.serial(c), prio)
                nxt += 1
        elif op[0] == "finish":
            busy = sorted((t, n) for n, w in workers.items() for t in w.running)
            if busy:
                tid, n = busy[op[1] % len(busy)]
                workers[n].finish(tid)
                p.finished(tid)
        elif op[0] == "drain":
            name = f"n{op[1]}"
            p.set_draining(name, not p.node(name).draining)
        elif op[0] == "secede":
            busy = sorted((t, n) for n, w in workers.items() for t, c in w.running.items() if c)
            if busy:
                tid, n = busy[op[1] % len(busy)]
                workers[n].secede(tid)
                assert p.release_cores(tid) and not p.release_cores(tid)  # once: it holds none after
        elif op[0] == "steal" and steals:
            tid, n = steals.pop(0)
            if workers[n].give_back(tid):
                p.cancel(tid)
                p.submit(tid, Resources.serial(cores[tid]), 0)
            else:
                p.steal_refused(tid)
        dispatch()
        for n, w in workers.items():
            status = p.node(n)
            assert set(status.running) == set(w.running), (n, status, w.running)
            assert [t for t, _ in w.pending] == list(status.queued)
        p.check_invariants()


def test_the_plugin_refuses_a_bad_prefetch_before_it_starts(tmp_path: object) -> None:
    from balsam_dask import BalsamPlugin

    with pytest.raises(InvalidSpec, match=r"prefetch=-1 is invalid: give an integer >= 0, e.g. prefetch=2 \(tasks"):
        BalsamPlugin("sqlite:///never-opened.db", prefetch=-1)


def test_a_node_whose_worker_cannot_gate_queued_tasks_gets_none() -> None:
    p = Placer(prefetch=2)
    p.add_node(NodeInfo("plain", "A", 1, queues=False))
    p.add_node(NodeInfo("gated", "A", 1))
    submit(p, range(10))
    _, queued = split(p.schedule(0.0))
    assert set(queued.values()) == {"gated"} and len(queued) == 2
    p.check_invariants()
    with pytest.raises(InvalidSpec, match=r"queues='yes' is invalid: give True or False"):
        NodeInfo("n", "A", 1, queues="yes")  # type: ignore[arg-type]
