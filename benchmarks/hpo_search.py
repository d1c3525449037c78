"""Asynchronous successive halving (ASHA) for benchmarks/hpo.py: which trial starts next, and
whether a trial that reached a rung goes on. Pure: no I/O, no clock, no randomness of its own.

Rungs are epoch budgets ``r_0 < r_1 < ... < r_K`` (``r_k = min_epochs * eta**k``, the last one
``max_epochs``). A configuration's result at rung ``k`` is its validation accuracy after ``r_k``
epochs. ASHA promotes a configuration out of rung ``k`` when it is among the best
``floor(n_k / eta)`` of the ``n_k`` results rung ``k`` holds, once; a free worker takes the
promotion of the highest rung first, else a new configuration (Li et al., "A System for
Massively Parallel Hyperparameter Tuning", MLSys 2020, algorithm 2).

A trial runs as one task that trains on past its rungs and reports at each. When it reports:

- it is among the best of its rung: it is promoted in place and goes on (no new task);
- it is not: it is paused, that is its task is killed (its checkpoint at that rung is kept).

A paused configuration can still be promoted later, when more results make its rung's top
``floor(n_k / eta)`` wider and it is in it: :meth:`Asha.next_start` then starts a new task that
resumes it from its checkpoint. So the search kills trials that stop early and creates tasks
from results while it runs: the promotions and the new configurations.

ASHA samples configurations without end; this search has a budget of them. Once all are
sampled, a rung promotes at least its best configuration (``max(1, floor(n_k / eta))``), so the
best ones go on to the last rung instead of waiting for results that will never come.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Hidden layer widths and depths a configuration draws from.
WIDTHS = (32, 64, 128, 256)
DEPTHS = (1, 2)
BATCHES = (64, 128, 256)


@dataclass(frozen=True)
class Config:
    """One point of the search space: an MLP and how it is trained, and the cores it gets."""

    id: int
    hidden: tuple[int, ...]
    learning_rate: float
    alpha: float
    batch_size: int
    cores: int


def sample_configs(seed: int, count: int, max_cores: int) -> list[Config]:
    """``count`` configurations drawn from ``seed`` (the same list for every mode of a run).
    Larger networks get more cores: 1 up to 128 hidden units, 2 up to 256, 4 beyond, at most ``max_cores``."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        width = rng.choice(WIDTHS)
        hidden = (width,) * rng.choice(DEPTHS)
        lr = 10 ** rng.uniform(-4, -0.5)
        alpha = 10 ** rng.uniform(-6, -2)
        units = sum(hidden)
        cores = 1 if units <= 128 else 2 if units <= 256 else 4
        out.append(Config(i, hidden, lr, alpha, rng.choice(BATCHES), max(1, min(cores, max_cores))))
    return out


def rungs(min_epochs: int, max_epochs: int, eta: int) -> list[int]:
    """The rungs' epoch budgets: ``min_epochs * eta**k`` below ``max_epochs``, then ``max_epochs``."""
    if not 1 <= min_epochs <= max_epochs or eta < 2:
        raise ValueError(
            f"rungs need 1 <= min_epochs <= max_epochs and eta >= 2, got {min_epochs}, {max_epochs}, {eta}"
        )
    out = []
    r = min_epochs
    while r < max_epochs:
        out.append(r)
        r *= eta
    return [*out, max_epochs]


class Asha:
    """The search's state: ``configs`` configurations to sample in order (ids 0..configs-1),
    ``n_rungs`` rungs, reduction factor ``eta``."""

    def __init__(self, configs: int, n_rungs: int, eta: int) -> None:
        if configs < 1 or n_rungs < 1 or eta < 2:
            raise ValueError(f"Asha needs configs >= 1, n_rungs >= 1, eta >= 2, got {configs}, {n_rungs}, {eta}")
        self.configs = configs
        self.top_rung = n_rungs - 1
        self.eta = eta
        self.sampled = 0
        self.results: list[dict[int, float]] = [{} for _ in range(n_rungs)]
        self.promoted: list[set[int]] = [set() for _ in range(n_rungs)]
        self.running: dict[int, int] = {}  # config -> the rung it reports next

    def top(self, rung: int) -> list[int]:
        """The configurations rung ``rung`` may promote: its best ``floor(n / eta)`` (ties: lower
        id); at least its best one once every configuration is sampled."""
        res = self.results[rung]
        best = sorted(res, key=lambda c: (-res[c], c))
        return best[: len(res) // self.eta or int(self.sampled == self.configs)]

    def report(self, config: int, rung: int, score: float) -> bool:
        """A running configuration reached ``rung`` with ``score``: True if it goes on (promoted,
        or at the top rung, where its task ends by itself), False if its task is to be killed."""
        if self.running.get(config) != rung:
            raise ValueError(f"config {config} reports rung {rung}, expected {self.running.get(config)}")
        self.results[rung][config] = score
        if rung == self.top_rung:
            self.running[config] = rung + 1  # nothing more to report
            return True
        if config in self.top(rung):
            self.promoted[rung].add(config)
            self.running[config] = rung + 1
            return True
        self.running[config] = -1  # stopping: no more reports are taken
        return False

    def ended(self, config: int) -> None:
        """The configuration's task ended (finished, killed or failed)."""
        self.running.pop(config, None)

    def _promotable(self) -> tuple[int, int] | None:
        for rung in range(self.top_rung - 1, -1, -1):
            for c in self.top(rung):
                if c not in self.promoted[rung] and c not in self.running:
                    return c, rung
        return None

    def next_start(self) -> tuple[int, int] | None:
        """What a free worker runs: ``(config, rung)``, the rung it starts from (0: a new
        configuration from scratch; ``k``: a promotion out of rung ``k - 1``, from its
        checkpoint), or None when there is nothing to start now."""
        got = self._promotable()
        if got is not None:
            config, rung = got
            self.promoted[rung].add(config)
            self.running[config] = rung + 1
            return config, rung + 1
        if self.sampled < self.configs:
            config = self.sampled
            self.sampled += 1
            self.running[config] = 0
            return config, 0
        return None

    @property
    def done(self) -> bool:
        """Every configuration sampled, nothing running and nothing left to promote."""
        return self.sampled == self.configs and not self.running and self._promotable() is None

    def best(self) -> tuple[float, int, int] | None:
        """``(score, config, rung)`` of the best result so far (ties: the higher rung, then lower id)."""
        found = [(s, r, -c) for r, res in enumerate(self.results) for c, s in res.items()]
        if not found:
            return None
        s, r, c = max(found)
        return s, -c, r


def utilization(spans: list[tuple[float, float, int]], allocations: list[tuple[float, float, int]]) -> float:
    """Busy core-seconds over allocated core-seconds, from the first start of a span to the last
    end: ``spans`` are ``(start, end, cores)`` of each run of a trial, ``allocations`` ``(start,
    end, cores)`` of what held the nodes (their part inside that window counts)."""
    if not spans:
        return 0.0
    low, high = min(s for s, _, _ in spans), max(e for _, e, _ in spans)
    held = sum(max(0.0, min(e, high) - max(s, low)) * c for s, e, c in allocations)
    busy = sum((e - s) * c for s, e, c in spans)
    return busy / held if held > 0 else 0.0
