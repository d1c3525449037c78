"""The packing simulator on a small deterministic run: conservation and accounting."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import packing_sim as sim

LIMITS = sim.site_limits(256)


def small_workload(seed: int = 3) -> sim.Workload:
    return sim.mixed(12, 200, random.Random(seed))


@pytest.mark.parametrize("policy", sim.policies(LIMITS), ids=lambda p: p.name)
def test_every_task_completes_once_and_busy_fits_allocated(policy: sim.PolicySpec) -> None:
    wl = small_workload()
    r = sim.simulate(wl, policy, LIMITS, sim.QueueModel(), seed=11, check=True)
    assert all(n == 1 for n in r.completions.values())
    assert len(r.completions) == r.done <= r.tasks
    assert r.useful_node_s + r.lost_node_s <= r.alloc_node_s + 1e-6
    assert r.peak_nodes <= LIMITS.max_total_nodes
    if policy.name == "dask_adaptive":  # one-node jobs cannot run multi-node gangs
        gangs = sum(1 for s in wl.shape if wl.resources[s].nodes > 1)
        assert r.done == r.tasks - gangs
    else:
        assert r.done == r.tasks and r.makespan > 0


def test_simulation_is_deterministic_and_ours_is_efficient() -> None:
    ours = sim.policies(LIMITS)[0]
    a = sim.simulate(small_workload(), ours, LIMITS, sim.QueueModel(), seed=5)
    b = sim.simulate(small_workload(), ours, LIMITS, sim.QueueModel(), seed=5)
    assert (a.alloc_node_s, a.makespan, a.jobs) == (b.alloc_node_s, b.makespan, b.jobs)
    assert a.utilization > 0.5


def test_walltime_expiry_kills_and_retries() -> None:
    """A job far shorter than the tasks: attempts are lost, then retried in later jobs."""
    wl = sim.sweep(4, random.Random(0))
    short = sim.PolicySpec("short", lambda b, a, lim, now: sim.baselines.fixed(
        b, a, lim, now, sim.baselines.FixedConfig(nodes=4, walltime=900.0)), 60.0, walltime_aware=False)  # fmt: skip
    r = sim.simulate(wl, short, LIMITS, sim.QueueModel(), seed=1, horizon=3 * 86400.0)
    assert r.kills > 0 and r.lost_node_s > 0
    assert r.useful_node_s + r.lost_node_s <= r.alloc_node_s + 1e-6


def test_releasing_idle_nodes_saves_node_hours_and_loses_no_task() -> None:
    """The same policy with and without Decision.releases: idle nodes of a job nothing waiting
    can use are given back (fewer node-hours), and no running task is ever taken away."""
    wl = sim.sweep(300, random.Random(2))
    with_rel, without = (sim.PolicySpec("ours", sim.decide, 15.0, releases=r) for r in (True, False))
    a = sim.simulate(wl, with_rel, LIMITS, sim.QueueModel(), seed=4, check=True)
    b = sim.simulate(wl, without, LIMITS, sim.QueueModel(), seed=4, check=True)
    assert a.released > 0 and b.released == 0
    assert a.kills == b.kills == 0 and a.done == b.done == len(wl.shape)
    assert a.node_hours < b.node_hours * 0.99
    assert a.useful_node_s <= a.alloc_node_s
