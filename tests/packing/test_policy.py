"""The allocation-sizing policy and its baselines: tables plus hypothesis properties."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from balsam_dask.errors import InvalidSpec
from balsam_dask.packing.policy import (
    EFFICIENCY,
    UNUSED_AFTER,
    AllocationView,
    BacklogShape,
    Decision,
    SiteLimits,
    decide,
    per_node,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import baselines

from balsam_dask.spec import NodeShape

NODE = NodeShape(cores=64, gpus=4)
LIMITS = SiteLimits(
    min_nodes=1, max_nodes_per_job=1024, max_walltime=21600.0, min_walltime=600.0, max_queued_jobs=20,
    max_total_nodes=4096, node=NODE, queued_timeout=3600.0, idle_timeout=60.0, default_task_walltime=3600.0,
)  # fmt: skip


def running(
    aid: str, nodes: int, idle: int = 0, end: float = 10_000.0, idle_since: float | None = None,
    releasable: tuple[tuple[str, float], ...] = (),
) -> AllocationView:  # fmt: skip
    return AllocationView(aid, nodes, idle, "running", 0.0, 0.0, end, 0.0, end, idle_since, releasable)


def queued(aid: str, nodes: int, walltime: float = 3600.0, queued_for: float = 0.0) -> AllocationView:
    return AllocationView(aid, nodes, 0, "queued", 0.0, None, None, queued_for, walltime)


def apply(d: Decision, allocs: list[AllocationView], now: float) -> list[AllocationView]:
    gone = dict(d.releases)
    kept = []
    for a in allocs:
        if a.id in d.cancels:
            continue
        names = set(gone.get(a.id, ()))
        if names:
            rel = tuple(r for r in a.releasable if r[0] not in names)
            a = replace(a, nodes=a.nodes - len(names), idle_nodes=a.idle_nodes - len(names), releasable=rel)
        kept.append(a)
    new = [queued(f"new{i}-{now}", r.nodes, r.walltime) for i, r in enumerate(d.requests)]
    return kept + new


# ---------------------------------------------------------------------------- tables
def test_nothing_to_do() -> None:
    assert decide([], [], LIMITS, 0.0) == Decision((), (), decide([], [], LIMITS, 0.0).reason)
    assert not decide([], [], LIMITS, 0.0).requests


def test_serial_backlog_is_covered_with_the_shortest_fitting_walltime() -> None:
    backlog = [BacklogShape(1, 16, 0, 600.0, 40_000)]  # 4 per node: 6e6 node-s
    d = decide(backlog, [], LIMITS, 0.0)
    work = 40_000 * 600.0 / 4
    assert sum(r.nodes * r.walltime for r in d.requests) * EFFICIENCY >= work * (1 - 1e-9)
    assert all(LIMITS.min_walltime <= r.walltime <= LIMITS.max_walltime for r in d.requests)
    assert all(r.nodes <= LIMITS.max_nodes_per_job for r in d.requests)
    assert "request" in d.reason


def test_gang_gets_a_wide_enough_allocation_even_when_capacity_exists() -> None:
    backlog = [BacklogShape(256, 64, 0, 1200.0, 1)]
    d = decide(backlog, [running("small", 100, end=1e9)], LIMITS, 0.0)
    assert d.requests and all(r.nodes >= 256 and r.walltime >= 1200.0 for r in d.requests)


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        (BacklogShape(2048, 64, 0, 600.0, 3), "at most 1024"),
        (BacklogShape(1, 64, 0, 30_000.0, 3), "at most 21600"),
        (BacklogShape(1, 128, 0, 60.0, 3), "nodes have 64 cores"),
        (BacklogShape(1, 1, 8, 60.0, 3), "4 GPUs"),
    ],
)
def test_impossible_tasks_are_named_not_requested(shape: BacklogShape, words: str) -> None:
    d = decide([shape], [], LIMITS, 0.0)
    assert d.requests == () and "cannot place" in d.reason and words in d.reason


def test_limits_on_queued_jobs_and_total_nodes() -> None:
    backlog = [BacklogShape(1, 64, 0, 3600.0, 100_000)]
    full_queue = [queued(f"q{i}", 1, queued_for=1.0) for i in range(LIMITS.max_queued_jobs)]
    d = decide(backlog, full_queue, LIMITS, 0.0)
    assert d.requests == () and "max_queued_jobs" in d.reason
    d = decide(backlog, [running("r", 4096, end=100.0)], LIMITS, 0.0)
    assert d.requests == () and "max_total_nodes" in d.reason


def test_idle_allocation_released_only_after_idle_timeout_and_empty_backlog() -> None:
    idle = running("r", 10, idle=10, idle_since=100.0)
    assert decide([], [idle], LIMITS, 150.0).cancels == ()
    assert decide([], [idle], LIMITS, 160.0).cancels == ("r",)
    backlog = [BacklogShape(1, 1, 0, 60.0, 5)]
    assert decide(backlog, [idle], LIMITS, 1000.0).cancels == ()  # the backlog needs it


def test_idle_nodes_of_a_busy_job_released_when_no_waiting_task_can_use_it() -> None:
    job = running("r", 4, idle=2, end=5000.0, releasable=(("r-0", 100.0), ("r-3", 150.0)))
    assert decide([], [job], LIMITS, 159.0).releases == ()  # neither idle for idle_timeout yet
    d = decide([], [job], LIMITS, 170.0)
    assert d.releases == (("r", ("r-0",)),) and d.cancels == () and "release 1 idle node(s) of r" in d.reason
    assert decide([], [job], LIMITS, 300.0).releases == (("r", ("r-0", "r-3")),)
    # a waiting task that fits the job's remaining time keeps every node ...
    few = [BacklogShape(1, 1, 0, 600.0, 5)]
    assert decide(few, [job], LIMITS, 200.0).releases == ()
    # ... until the placer has left them idle UNUSED_AFTER x idle_timeout (they are not needed)
    d = decide(few, [job], LIMITS, 300.0)
    assert d.releases == (("r", ("r-0", "r-3")),) and "left idle by the placer" in d.reason and not d.requests
    # kept when the backlog needs their capacity, or a waiting gang needs the job's width
    many = [BacklogShape(1, 64, 0, 600.0, 40)]  # 40 whole-node tasks: more than 4 nodes x 4700 s hold
    assert decide(many, [job], LIMITS, 300.0).releases == ()
    gang = [BacklogShape(3, 64, 0, 600.0, 1), *few]
    assert decide(gang, [job], LIMITS, 300.0).releases == (("r", ("r-0",)),)
    # ... one that cannot (too long, or too wide) does not
    too_long = [BacklogShape(1, 1, 0, 4900.0, 5)]
    assert decide(too_long, [job], LIMITS, 300.0).releases == (("r", ("r-0", "r-3")),)
    too_wide = [BacklogShape(8, 64, 0, 600.0, 1)]
    assert decide(too_wide, [job], LIMITS, 300.0).releases == (("r", ("r-0", "r-3")),)
    # every node idle: the whole job is cancelled instead, once idle_timeout has passed
    all_idle = running("r", 2, idle=2, idle_since=150.0, releasable=(("r-0", 100.0), ("r-1", 150.0)))
    assert decide([], [all_idle], LIMITS, 300.0).releases == ()
    assert decide([], [all_idle], LIMITS, 300.0).cancels == ("r",)


def test_releasable_nodes_are_checked() -> None:
    with pytest.raises(InvalidSpec, match=r"releasable=\(\('a', 1.0\), \('b', 1.0\)\) is invalid .* e.g."):
        running("r", 4, idle=1, releasable=(("a", 1.0), ("b", 1.0)))
    with pytest.raises(InvalidSpec, match=r"releasable=.*running job"):
        AllocationView("q", 4, 0, "queued", 0.0, None, None, 0.0, 600.0, None, (("a", 1.0),))
    with pytest.raises(InvalidSpec, match="releasable="):
        running("r", 4, idle=1, releasable=(("", 1.0),))


def test_long_queued_job_cancelled_only_when_not_needed() -> None:
    old = queued("q", 8, queued_for=LIMITS.queued_timeout + 1)
    assert decide([], [old], LIMITS, 0.0).cancels == ("q",)
    assert decide([], [replace(old, queued_for=10.0)], LIMITS, 0.0).cancels == ()
    assert decide([BacklogShape(1, 1, 0, 60.0, 5)], [old], LIMITS, 0.0).cancels == ()


def test_invalid_limits_are_rejected_with_a_correct_form() -> None:
    with pytest.raises(InvalidSpec, match="max_nodes_per_job"):
        replace(LIMITS, max_nodes_per_job=0)
    with pytest.raises(InvalidSpec, match="max_walltime"):
        replace(LIMITS, max_walltime=60.0)
    with pytest.raises(InvalidSpec, match="count"):
        BacklogShape(1, 1, 0, None, -1)
    with pytest.raises(InvalidSpec, match="idle_nodes"):
        running("r", 4, idle=5)


def test_per_node_packing() -> None:
    assert per_node(BacklogShape(1, 16, 0, None, 1), NODE) == 4
    assert per_node(BacklogShape(1, 1, 1, None, 1), NODE) == 4  # GPUs bound it
    assert per_node(BacklogShape(4, 64, 0, None, 1), NODE) == 1
    assert per_node(BacklogShape(1, 65, 0, None, 1), NODE) == 0


# ---------------------------------------------------------------------------- properties
shapes = st.builds(
    BacklogShape,
    nodes=st.sampled_from([1, 1, 1, 2, 8, 64, 512, 2048]),
    cores=st.sampled_from([1, 4, 16, 64]),
    gpus=st.sampled_from([0, 0, 1, 4]),
    walltime=st.sampled_from([None, 9.0, 600.0, 3600.0, 20_000.0, 40_000.0]),
    count=st.integers(0, 50_000),
    running=st.integers(0, 1000),
)


@st.composite
def allocations(draw: st.DrawFn) -> list[AllocationView]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        nodes = draw(st.sampled_from([1, 16, 128, 1024]))
        if draw(st.booleans()):
            out.append(queued(f"q{i}", nodes, draw(st.sampled_from([600.0, 7200.0])), draw(st.floats(0, 8000))))
        else:
            idle = draw(st.integers(0, nodes))
            since = draw(st.sampled_from([None, 0.0, 950.0])) if idle == nodes else None
            n_rel = draw(st.integers(0, min(idle, 3)))
            rel = tuple((f"r{i}-{k}", draw(st.sampled_from([0.0, 950.0, 990.0]))) for k in range(n_rel))
            end = draw(st.sampled_from([1100.0, 5000.0, 30_000.0]))
            out.append(running(f"r{i}", nodes, idle, end, since, rel))
    return out


limits_st = st.builds(
    SiteLimits,
    min_nodes=st.sampled_from([1, 2, 8]),
    max_nodes_per_job=st.sampled_from([8, 128, 1024]),
    max_walltime=st.sampled_from([3600.0, 21600.0]),
    min_walltime=st.sampled_from([60.0, 600.0]),
    max_queued_jobs=st.sampled_from([1, 3, 20]),
    max_total_nodes=st.sampled_from([64, 1024, 4096]),
    node=st.just(NODE),
    queued_timeout=st.sampled_from([60.0, 3600.0]),
    idle_timeout=st.sampled_from([30.0, 60.0]),
    default_task_walltime=st.sampled_from([600.0, 3600.0]),
)


def _runnable(s: BacklogShape, limits: SiteLimits) -> bool:
    wt = s.walltime if s.walltime is not None else limits.default_task_walltime
    return per_node(s, limits.node) > 0 and s.nodes <= limits.max_nodes_per_job and wt <= limits.max_walltime


@settings(max_examples=300, deadline=None)
@given(backlog=st.lists(shapes, max_size=5), allocs=allocations(), limits=limits_st)
def test_limits_always_respected_and_widest_gang_fits(
    backlog: list[BacklogShape], allocs: list[AllocationView], limits: SiteLimits
) -> None:
    assume(limits.min_nodes <= limits.max_nodes_per_job <= limits.max_total_nodes)
    now = 1000.0
    d = decide(backlog, allocs, limits, now)
    live = [a for a in allocs if a.id not in d.cancels]
    queued_now = sum(1 for a in live if a.state == "queued")
    assert queued_now + len(d.requests) <= max(limits.max_queued_jobs, queued_now)
    total = sum(a.nodes for a in live) - sum(len(names) for _, names in d.releases)  # released: gone at once
    assert not d.requests or total + sum(r.nodes for r in d.requests) <= limits.max_total_nodes
    waiting = [s for s in backlog if s.count and _runnable(s, limits)]
    for r in d.requests:
        assert limits.min_nodes <= r.nodes <= limits.max_nodes_per_job
        assert limits.min_walltime <= r.walltime <= limits.max_walltime
        # never narrower than the widest gang, never shorter than the longest task
        assert r.nodes >= max(s.nodes for s in waiting)
        assert r.walltime >= max(s.walltime or limits.default_task_walltime for s in waiting)
    if not waiting:
        assert d.requests == ()
    for s in backlog:
        if s.count and not _runnable(s, limits):
            assert "cannot place" in d.reason


@settings(max_examples=300, deadline=None)
@given(backlog=st.lists(shapes, max_size=5), allocs=allocations(), limits=limits_st)
def test_no_oscillation(backlog: list[BacklogShape], allocs: list[AllocationView], limits: SiteLimits) -> None:
    assume(limits.min_nodes <= limits.max_nodes_per_job <= limits.max_total_nodes)
    now = 1000.0
    first = decide(backlog, allocs, limits, now)
    second = decide(backlog, apply(first, allocs, now), limits, now)
    assert second.requests == () and second.cancels == () and second.releases == (), (first, second)


@settings(max_examples=300, deadline=None)
@given(backlog=st.lists(shapes, max_size=5), allocs=allocations(), limits=limits_st)
def test_releases_only_idle_nodes_not_needed(
    backlog: list[BacklogShape], allocs: list[AllocationView], limits: SiteLimits
) -> None:
    """Released: idle nodes of jobs nothing waiting fits (after idle_timeout), or nodes the
    placer left unused (after UNUSED_AFTER x idle_timeout) in a job that stays as wide as the
    gangs it hosts, with no request in the same decision (the capacity left covers the backlog)."""
    assume(limits.min_nodes <= limits.max_nodes_per_job <= limits.max_total_nodes)
    now = 1000.0
    d = decide(backlog, allocs, limits, now)
    by_id = {a.id: a for a in allocs}
    waiting = [s for s in backlog if s.count and _runnable(s, limits)]
    for aid, names in d.releases:
        a = by_id[aid]
        assert aid not in d.cancels and 0 < len(names) < a.nodes
        since = dict(a.releasable)
        fits = [s for s in waiting if s.nodes <= a.nodes and (s.walltime or limits.default_task_walltime)
                <= a.remaining(now)]  # fmt: skip
        if not fits:
            assert all(now - since[n] >= limits.idle_timeout for n in names)
        else:
            assert all(now - since[n] >= UNUSED_AFTER * limits.idle_timeout for n in names)
            assert a.nodes - len(names) >= max(s.nodes for s in fits)
            # no request for capacity follows the release: only for a gang no job can host
            live = [x for x in allocs if x.id not in d.cancels]
            assert not d.requests or any(
                s.nodes > 1 and not any(x.nodes >= s.nodes and x.remaining(now) >= (s.walltime or
                limits.default_task_walltime) for x in live) for s in waiting
            )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(allocs=allocations(), now=st.floats(1000.0, 2000.0))
def test_empty_backlog_cancels_idle_after_idle_timeout_only(allocs: list[AllocationView], now: float) -> None:
    d = decide([], allocs, LIMITS, now)
    assert d.requests == ()
    for a in allocs:
        idle_long = a.state == "running" and a.idle_since is not None and now - a.idle_since >= LIMITS.idle_timeout
        queued_long = a.state == "queued" and a.queued_for > LIMITS.queued_timeout
        assert (a.id in d.cancels) == (idle_long or queued_long)


# ---------------------------------------------------------------------------- baselines
def test_elastic_queue_follows_balsam_rules() -> None:
    cfg = baselines.ElasticQueueConfig()
    backlog = [BacklogShape(1, 16, 0, 600.0, 400)]  # footprint 100 nodes
    d = baselines.elastic_queue(backlog, [], LIMITS, 0.0, cfg)
    assert [(r.nodes, r.walltime) for r in d.requests] == [(100, (360 - 5) * 60.0)]
    d = baselines.elastic_queue(backlog, [queued("q", 30)], LIMITS, 0.0, cfg)
    assert [r.nodes for r in d.requests] == [70]
    d = baselines.elastic_queue([BacklogShape(1, 64, 0, 600.0, 5)], [], LIMITS, 0.0, cfg)
    assert [r.nodes for r in d.requests] == [cfg.min_num_nodes]  # at least min_num_nodes
    d = baselines.elastic_queue([BacklogShape(1, 64, 0, 600.0, 500)], [], LIMITS, 0.0, cfg)
    assert [r.nodes for r in d.requests] == [cfg.max_num_nodes]  # at most max_num_nodes
    jobs = [queued(f"q{i}", 1) for i in range(cfg.max_queued_jobs)]
    assert baselines.elastic_queue(backlog, jobs, LIMITS, 0.0, cfg).requests == ()
    stale = queued("old", 20, queued_for=cfg.max_queue_wait_time_min * 60 + 1)
    assert baselines.elastic_queue(backlog, [stale], LIMITS, 0.0, cfg).cancels == ("old",)
    idle = running("r", 4, idle=4, idle_since=0.0)
    assert baselines.elastic_queue([], [idle], LIMITS, cfg.idle_ttl_sec, cfg).cancels == ("r",)


def test_dask_adaptive_one_node_jobs() -> None:
    cfg = baselines.AdaptiveConfig()
    backlog = [BacklogShape(1, 64, 0, 600.0, 10), BacklogShape(8, 64, 0, 600.0, 3)]
    d = baselines.dask_adaptive(backlog, [], LIMITS, 0.0, cfg)
    assert [r.nodes for r in d.requests] == [1] * 10  # gangs cannot run on one-node jobs
    d = baselines.dask_adaptive([BacklogShape(1, 1, 0, 1.0, 640)], [], LIMITS, 0.0, cfg)
    assert len(d.requests) == math.ceil(min(640, 640 * 1.0 / cfg.target_duration) / 64)
    idle = [running(f"r{i}", 1, idle=1, idle_since=0.0) for i in range(3)]
    assert len(baselines.dask_adaptive([], idle, LIMITS, 2.0, cfg).cancels) == 0
    assert len(baselines.dask_adaptive([], idle, LIMITS, 3.0, cfg).cancels) == 3
    d = baselines.dask_adaptive([], [queued("q", 1)], LIMITS, 0.0, cfg)
    assert d.cancels == ("q",)


def test_fixed_allocation() -> None:
    cfg = baselines.FixedConfig(nodes=256)
    d = baselines.fixed([BacklogShape(1, 64, 0, 600.0, 10)], [], LIMITS, 0.0, cfg)
    assert [(r.nodes, r.walltime) for r in d.requests] == [(256, LIMITS.max_walltime)]
    assert baselines.fixed([BacklogShape(1, 64, 0, 600.0, 10)], [queued("q", 256)], LIMITS, 0.0, cfg).requests == ()
    assert baselines.fixed([BacklogShape(512, 64, 0, 600.0, 1)], [], LIMITS, 0.0, cfg).requests == ()
    idle = running("r", 256, idle=256, idle_since=0.0)
    assert baselines.fixed([], [idle], LIMITS, 31.0, cfg).cancels == ("r",)
