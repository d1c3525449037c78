"""parents_first: the order in which the plugin records the new tasks of one graph."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from balsam_dask.scheduler.graph import parents_first


@dataclass(eq=False)
class FakeTS:  # the two attributes parents_first reads of distributed's TaskState
    key: str
    dependencies: set[FakeTS] = field(default_factory=set)


def test_dependencies_come_first_whatever_the_priorities() -> None:
    rng = random.Random(7)
    tasks = {f"t{i}": FakeTS(f"t{i}") for i in range(300)}
    for i in range(1, 300):  # a random DAG: edges only from lower to higher numbers
        for j in rng.sample(range(i), k=min(i, rng.randint(0, 3))):
            tasks[f"t{i}"].dependencies.add(tasks[f"t{j}"])
    keys = list(tasks)
    rng.shuffle(keys)
    # priorities that contradict the dependencies (as user annotations can), and one missing
    priority: dict[str, tuple[int, ...] | None] = {k: (rng.randint(0, 5), -int(k[1:])) for k in keys}
    priority["t42"] = None
    out = parents_first(keys, priority, tasks)  # type: ignore[arg-type]
    assert sorted(out) == sorted(keys)
    pos = {k: i for i, k in enumerate(out)}
    for k, ts in tasks.items():
        assert all(pos[d.key] < pos[k] for d in ts.dependencies), k


def test_priority_order_without_dependencies_and_old_dependencies_ignored() -> None:
    old = FakeTS("old")  # a dependency from an earlier graph: not among the keys
    tasks = {f"m{i}": FakeTS(f"m{i}", {old} if i % 2 else set()) for i in range(50)}
    keys = list(tasks)
    random.Random(1).shuffle(keys)
    out = parents_first(keys, {k: (0, 1, int(k[1:])) for k in keys}, tasks)
    assert out == [f"m{i}" for i in range(50)]
    assert parents_first(["gone", "m1"], {"m1": (0,)}, tasks) == ["gone", "m1"]  # a key no longer known
