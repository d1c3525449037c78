"""benchmarks/hpo_search.py, the pure ASHA core of benchmarks/hpo.py: rungs, promotions in place
and by a new task, stops, the end of the search, the sampled configurations, utilization."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from hpo_search import Asha, rungs, sample_configs, utilization


@pytest.mark.parametrize(
    ("low", "high", "eta", "expected"),
    [(1, 27, 3, [1, 3, 9, 27]), (1, 10, 3, [1, 3, 9, 10]), (2, 2, 3, [2]), (1, 8, 2, [1, 2, 4, 8]),
     (3, 81, 3, [3, 9, 27, 81]), (5, 6, 4, [5, 6])],
)  # fmt: skip
def test_rungs(low: int, high: int, eta: int, expected: list[int]) -> None:
    assert rungs(low, high, eta) == expected


@pytest.mark.parametrize(("low", "high", "eta"), [(0, 3, 3), (4, 3, 3), (1, 9, 1)])
def test_bad_rungs_are_refused(low: int, high: int, eta: int) -> None:
    with pytest.raises(ValueError, match="rungs need 1 <= min_epochs <= max_epochs and eta >= 2"):
        rungs(low, high, eta)


# Each step: ("start", expected (config, rung) or None) | ("report", config, rung, score, goes on) | ("end", config)
# | ("done", expected).
IN_PLACE_AND_TOP: list[tuple[Any, ...]] = [
    ("start", (0, 0)), ("start", (1, 0)),
    ("report", 0, 0, 0.5, False),  # alone in its rung: floor(1/2) = 0 promotable, paused
    ("report", 1, 0, 0.7, True),  # best of 2: promoted in place
    ("end", 0), ("start", (2, 0)),  # nothing to promote (1 is), a new configuration
    ("report", 2, 0, 0.6, False),
    ("end", 2),
    ("report", 1, 1, 0.8, False),  # alone in rung 1
    ("start", (3, 0)), ("end", 1),
    ("report", 3, 0, 0.9, True),  # best of 4 at rung 0
    ("report", 3, 1, 0.95, True),  # best of 2 at rung 1
    ("done", False),
    ("report", 3, 2, 0.97, True),  # the top rung: its task ends by itself
    ("end", 3), ("start", None), ("done", True),
]  # fmt: skip
PROMOTED_BY_A_NEW_TASK: list[tuple[Any, ...]] = [
    ("start", (0, 0)), ("start", (1, 0)),
    ("report", 0, 0, 0.9, False),  # paused: no rung-mate yet
    ("end", 0), ("start", (2, 0)),
    ("report", 1, 0, 0.5, False),  # worse than 0: 0 is now promotable
    ("end", 1),
    ("start", (0, 1)),  # a promotion before the last configuration: 0 resumes at rung 1
    ("report", 2, 0, 0.95, True),  # best of 3: promoted in place (floor(3/2) = 1)
    ("end", 0), ("end", 2),
    ("start", None),  # every configuration sampled, rung 0's top one (2) promoted
    ("done", True),
]  # fmt: skip


ALL_SAMPLED: list[tuple[Any, ...]] = [
    ("start", (0, 0)), ("start", (1, 0)), ("start", None),
    ("report", 0, 0, 0.5, True),  # alone, but no configuration is left to sample: its rung's best goes on
    ("report", 1, 0, 0.6, True),  # floor(2/3) = 0: at least the best one, now 1
    ("report", 0, 1, 0.7, True),
    ("report", 1, 1, 0.65, False),
    ("end", 1), ("start", None),
    ("report", 0, 2, 0.8, True), ("end", 0), ("done", True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("configs", "n_rungs", "eta", "steps"),
    [(4, 3, 2, IN_PLACE_AND_TOP), (3, 2, 2, PROMOTED_BY_A_NEW_TASK), (2, 3, 3, ALL_SAMPLED)],
    ids=["in-place-and-top", "promoted-by-a-new-task", "all-sampled"],
)  # fmt: skip
def test_asha_steps(configs: int, n_rungs: int, eta: int, steps: list[tuple[Any, ...]]) -> None:
    asha = Asha(configs, n_rungs, eta)
    for i, (what, *rest) in enumerate(steps):
        if what == "start":
            assert asha.next_start() == rest[0], f"step {i}"
        elif what == "report":
            config, rung, score, goes_on = rest
            assert asha.report(config, rung, score) is goes_on, f"step {i}"
        elif what == "end":
            asha.ended(rest[0])
        else:
            assert asha.done is rest[0], f"step {i}"


def test_reports_out_of_turn_are_refused() -> None:
    asha = Asha(2, 3, eta=2)
    asha.next_start()
    with pytest.raises(ValueError, match="config 0 reports rung 1, expected 0"):
        asha.report(0, 1, 0.5)
    assert asha.report(0, 0, 0.5) is False
    with pytest.raises(ValueError, match="config 0 reports rung 1, expected -1"):  # stopping: nothing more is taken
        asha.report(0, 1, 0.6)
    with pytest.raises(ValueError, match="config 1 reports rung 0, expected None"):  # not running
        asha.report(1, 0, 0.6)
    with pytest.raises(ValueError, match="Asha needs configs >= 1"):
        Asha(0, 3, 3)


def test_best_prefers_the_higher_rung_then_the_lower_id() -> None:
    asha = Asha(3, 2, eta=2)
    assert asha.best() is None
    for _ in range(3):
        asha.next_start()
    asha.report(1, 0, 0.8)
    asha.report(2, 0, 0.8)
    assert asha.best() == (0.8, 1, 0)
    asha.report(0, 0, 0.9)  # 0 is best of three: promoted in place
    asha.report(0, 1, 0.9)
    assert asha.best() == (0.9, 0, 1)


def test_configurations_are_the_seeds_and_cores_follow_the_size() -> None:
    a, b = sample_configs(7, 50, 4), sample_configs(7, 50, 4)
    assert a == b and a != sample_configs(8, 50, 4)
    assert [c.id for c in a] == list(range(50))
    for c in a:
        units = sum(c.hidden)
        assert c.cores == (1 if units <= 128 else 2 if units <= 256 else 4)
        assert 1e-4 <= c.learning_rate <= 10**-0.5 and 1e-6 <= c.alpha <= 1e-2
    assert {c.cores for c in a} == {1, 2, 4}
    assert max(c.cores for c in sample_configs(7, 50, 2)) == 2


@pytest.mark.parametrize(
    ("spans", "allocations", "expected"),
    [([(0, 10, 1), (0, 10, 1)], [(0, 10, 2)], 1.0),
     ([(0, 10, 1)], [(0, 10, 2)], 0.5),
     ([(0, 5, 2), (5, 10, 1)], [(-5, 20, 2)], 0.75),  # the allocation outside the trials' window does not count
     ([(0, 4, 2), (6, 10, 2)], [(0, 5, 2), (5, 10, 2)], 0.8),  # one allocation after another
     ([(0, 10, 2)], [(0, 10, 2), (5, 10, 4)], 0.5),  # a second one joined halfway
     ([], [(0, 10, 2)], 0.0), ([(3, 3, 1)], [(0, 10, 1)], 0.0)],
)  # fmt: skip
def test_utilization(spans: list[tuple[float, float, int]], allocations: list[tuple[float, float, int]],
                     expected: float) -> None:  # fmt: skip
    assert utilization(spans, allocations) == pytest.approx(expected)
