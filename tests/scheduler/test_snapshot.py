"""The live page's snapshot (scheduler/snapshot.py, pure): tables of nodes, allocations, samples
and failures, and a snapshot of a real placer's accounting."""

from __future__ import annotations

import time
from typing import Any

import pytest

from balsam_dask.packing.placer import NodeInfo, NodeStatus, Placer
from balsam_dask.scheduler.page import summary_data
from balsam_dask.scheduler.snapshot import (
    OTHER,
    TAIL,
    USE_KINDS,
    AllocationInput,
    Failures,
    History,
    NodeInput,
    allocation_uses,
    natural,
    node_use,
    take,
)
from balsam_dask.spec import Resources, TaskSpec


def status(name: str = "tcp://w:1", cores: int = 4, free: int = 4, gpus: int = 0, free_gpus: tuple[str, ...] = (),
           running: tuple[Any, ...] = (), reserved: Any = None, queued: tuple[Any, ...] = (), alloc: str = "A",
           end: float | None = None, draining: bool = False) -> NodeStatus:  # fmt: skip
    return NodeStatus(name, alloc, cores, free, gpus, free_gpus, end, draining, reserved, running, queued)


KIND = {1: "python", 2: "python", 3: "app", 4: "mpi", 9: "mpi"}


def kind_of(task_id: Any) -> str:
    return KIND.get(task_id, OTHER)


# (node status, usage, running gangs, held: node -> task) ->
# (cores by kind, GPUs by kind, busy cores, busy GPUs, gang, reserved for, held for)
# fmt: off
NODE_CASES = {
    "idle": (status(), (), {}, {}, ((0, 0, 0, 0), (0, 0, 0, 0), 0, 0, None, None, None)),
    "python and app tasks": (status(free=1, running=(1, 2, 3)), ((1, 1, 0), (2, 1, 0), (3, 1, 0)), {}, {},
                             ((2, 1, 0, 0), (0, 0, 0, 0), 3, 0, None, None, None)),
    "GPUs, a task of no known kind": (status(gpus=2, free=2, free_gpus=("1",), running=(3, 7)),
                                      ((3, 1, 1), (7, 1, 0)), {}, {},
                                      ((0, 1, 0, 1), (0, 1, 0, 0), 2, 1, None, None, None)),
    "a gang holds the node whole": (status(free=0, running=(9,)), ((9, 4, 0),), {9: ("tcp://w:1", "tcp://w:2")}, {},
                                    ((0, 0, 4, 0), (0, 0, 0, 0), 4, 0, 9, None, None)),
    "reserved for a gang, finishing a task": (status(free=3, running=(1,), reserved=4), ((1, 1, 0),), {}, {},
                                              ((1, 0, 0, 0), (0, 0, 0, 0), 1, 0, None, 4, None)),
    "held for a starving task": (status(), (), {}, {"tcp://w:1": 2},
                                 ((0, 0, 0, 0), (0, 0, 0, 0), 0, 0, None, None, 2)),
}
# fmt: on


@pytest.mark.parametrize(("st", "usage", "gangs", "held", "expected"), NODE_CASES.values(), ids=NODE_CASES)
def test_a_nodes_use_by_kind(st: NodeStatus, usage: Any, gangs: Any, held: Any, expected: tuple[Any, ...]) -> None:
    u = node_use(NodeInput(st, "node-0", usage), kind_of, gangs, held)
    assert USE_KINDS == ("python", "app", "mpi", OTHER)
    assert (u.cores_by_kind, u.gpus_by_kind, u.busy_cores, u.busy_gpus, u.gang, u.reserved_for, u.held_for) == expected
    assert (u.name, u.running) == ("node-0", len(st.running))


# (records, node statuses, now) -> {job: (state, asked, live nodes, walltime left)}
# fmt: off
ALLOC_CASES = {
    "the nodes' earliest end": ([AllocationInput("j1", "slurm", "RUNNING", 2, 600.0, 1000.0)],
                                [status("a", alloc="j1", end=1500.0), status("b", alloc="j1", end=1400.0)], 1100.0,
                                {"j1": ("RUNNING", 2, 2, 300.0)}),
    "no node yet: start + walltime": ([AllocationInput("j2", "pbs", "RUNNING", 4, 600.0, 1000.0)], [], 1100.0,
                                      {"j2": ("RUNNING", 4, 0, 500.0)}),
    "queued: no end known": ([AllocationInput("j3", "lsf", "QUEUED", 4, 600.0, None)], [], 1100.0,
                             {"j3": ("QUEUED", 4, 0, None)}),
    "only its node-workers tell of it; past its end": ([], [status("c", alloc="ext", end=1050.0)], 1100.0,
                                                       {"ext": ("RUNNING", 1, 1, 0.0)}),
    "no walltime": ([AllocationInput("local-1", "local", "RUNNING", 1, None, 1000.0)], [status("d", alloc="local-1")],
                    1100.0, {"local-1": ("RUNNING", 1, 1, None)}),
}
# fmt: on


@pytest.mark.parametrize(("records", "nodes", "now", "expected"), ALLOC_CASES.values(), ids=ALLOC_CASES)
def test_allocations_and_their_walltime_left(records: Any, nodes: Any, now: float, expected: Any) -> None:
    got = {a.job_id: (a.state, a.nodes, a.live_nodes, a.left) for a in allocation_uses(now, records, nodes)}
    assert got == expected


def test_history_gives_the_samples_after_a_time_and_keeps_the_latest() -> None:
    h = History(("READY", "RUNNING"), keep=3)
    assert h.since(0.0) == ()
    for t in range(1, 6):
        h.sample(float(t), {"READY": 10 - t, "RUNNING": t, "OTHER": 99})
    assert h.since(0.0) == ((3.0, (7, 3)), (4.0, (6, 4)), (5.0, (5, 5)))  # bounded: the oldest went
    assert h.since(4.0) == ((5.0, (5, 5)),)
    assert h.since(5.0) == ()


def test_failures_newest_first_bounded_with_tails_trimmed() -> None:
    f = Failures(keep=3)
    spec = TaskSpec(kind="app", name="sim-4")
    f.add(1.0, 11, "key-a", None, "FAILED", "Traceback\nValueError: a")
    f.add(2.0, 12, ("tuple", 1), None, "FAILED", None)
    f.add(3.0, 13, "key-c", spec, "RUN_ERROR", "x" * (TAIL + 10) + "END")
    f.add(4.0, 14, "key-d", spec, "FAILED", "boom")
    got = f.newest(10)
    assert [x.task_id for x in got] == [14, 13, 12]
    assert [(x.name, x.kind) for x in got] == [("sim-4", "app"), ("sim-4", "app"), ("('tuple', 1)", OTHER)]
    assert len(got[1].tail) == TAIL and got[1].tail.endswith("END") and got[2].tail == ""
    assert [x.task_id for x in f.newest(2)] == [14, 13]


@pytest.mark.parametrize(("names", "ordered"), [
    (["node-10", "node-2", "node-1"], ["node-1", "node-2", "node-10"]),
    (["b-1", "a-3", "a-12"], ["a-3", "a-12", "b-1"]),
])  # fmt: skip
def test_nodes_are_shown_in_natural_order(names: list[str], ordered: list[str]) -> None:
    assert sorted(names, key=natural) == ordered


def test_a_snapshot_of_a_real_placers_accounting() -> None:
    """Two allocations; serial tasks of each kind, a running MPI gang, a gang waiting with
    nodes reserved: every node's use by kind adds up with its free cores, and names match."""
    p = Placer(hold_after=None)
    p.add_node(NodeInfo("tcp://a0", "A", 4, 0, 2000.0))
    p.add_node(NodeInfo("tcp://a1", "A", 4, 0, 2000.0))
    p.add_node(NodeInfo("tcp://b0", "B", 4, 2, None))
    p.add_node(NodeInfo("tcp://b1", "B", 4, 2, None))
    kinds = {"py": "python", "app": "app", "g1": "mpi", "g2": "mpi"}
    p.submit("g1", Resources(nodes=2))  # takes A's two nodes whole
    p.schedule(1000.0)
    p.submit("py", Resources.serial(3))
    p.submit("app", Resources.serial(1, gpus=1))
    p.schedule(1000.0)
    p.submit("g2", Resources(nodes=2))  # B's nodes are busy: reserved for it
    p.schedule(1000.0)
    assert set(p.running()) == {"g1", "py", "app"} and set(p.reservations()) == {"g2"}
    names = {f"tcp://{n}": f"node-{n}" for n in ("a0", "a1", "b0", "b1")}
    nodes = [NodeInput(p.node(n), names[n], p.usage(n)) for n in p.nodes()]
    history = History(("READY", "RUNNING", "FINISHED"))
    history.sample(999.0, {"READY": 2, "RUNNING": 1})
    history.sample(1000.0, {"READY": 1, "RUNNING": 3})
    failures = Failures()
    failures.add(998.0, 5, "bad", None, "FAILED", "ValueError: bad")
    records = [AllocationInput("A", "slurm", "RUNNING", 2, 1800.0, 200.0)]
    snap = take(1000.0, nodes, kinds.__getitem__, {"g1": p.running()["g1"].nodes}, p.reservations(), p.held(),
                records, {"READY": 1, "RUNNING": 3, "FINISHED": 0}, history, failures, since=999.5)  # fmt: skip
    assert [n.name for n in snap.nodes] == ["node-a0", "node-a1", "node-b0", "node-b1"]
    for n in snap.nodes:
        assert sum(n.cores_by_kind) + n.free_cores == n.cores
        assert sum(n.gpus_by_kind) + n.free_gpus == n.gpus
    by_name = {n.name: n for n in snap.nodes}
    assert by_name["node-a0"].gang == by_name["node-a1"].gang == "g1"
    assert by_name["node-a0"].cores_by_kind == (0, 0, 4, 0)
    used = {k: sum(n.cores_by_kind[USE_KINDS.index(k)] for n in snap.nodes) for k in ("python", "app", "mpi")}
    assert used == {"python": 3, "app": 1, "mpi": 8}
    assert sum(n.gpus_by_kind[1] for n in snap.nodes) == 1
    assert {n.name for n in snap.nodes if n.reserved_for == "g2"} == {"node-b0", "node-b1"}
    assert snap.cores == (12, 16) and snap.gpus == (1, 4)
    assert sorted((k.what, k.task_id, k.nodes) for k in snap.keeps) == [
        ("gang", "g1", ("node-a0", "node-a1")), ("reserved", "g2", ("node-b0", "node-b1"))]  # fmt: skip
    allocs = {a.job_id: (a.live_nodes, a.left) for a in snap.allocations}
    assert allocs == {"A": (2, 1000.0), "B": (2, None)}
    assert snap.states == ("READY", "RUNNING", "FINISHED") and snap.counts == (1, 3, 0)
    assert snap.history == ((1000.0, (1, 3, 0)),)
    assert [f.name for f in snap.failures] == ["bad"]
    # the page's header row (a table's: a changed Div would lay the whole page out again)
    assert summary_data(snap) == {
        "nodes": [4], "cores": ["12/16"], "gpus": ["1/4"], "allocations": [2], "tasks": ["READY 1 \u00b7 RUNNING 3"],
        "updated": [time.strftime("%H:%M:%S", time.localtime(1000.0))],
    }  # fmt: skip
