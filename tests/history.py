"""Reading placement back from the store's history: occupancy and idle-core checks."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from balsam_dask.scheduler.dispatch import QUEUED_AT
from balsam_dask.store import Store
from balsam_dask.store.ops import TaskRecord


@dataclass
class Run:
    task: TaskRecord
    worker: str
    start: float  # RUNNING (dispatch)
    done: float  # RUN_DONE (compute end on the worker)
    end: float  # FINISHED (the scheduler saw it: resources free)
    ready: float  # READY (runnable)
    queued_at: float | None = None  # prefetched: when it was queued on its node (before it started)


def runs(store: Store, tasks: list[TaskRecord]) -> list[Run]:
    out = []
    for t in tasks:
        ev = store.history(t.id)
        by = {e.to_state: e for e in ev}
        running = [e for e in ev if e.to_state == "RUNNING"][-1]
        queued = [w[len(QUEUED_AT) :] for w in (running.message or "").split() if w.startswith(QUEUED_AT)]
        out.append(Run(t, running.worker or "", running.ts, by["RUN_DONE"].ts, by["FINISHED"].ts, by["READY"].ts,
                       float(queued[0]) if queued else None))  # fmt: skip
    return out


def max_overlap_cores(rs: list[Run], node_cores: int) -> dict[str, int]:
    """The most cores in use at once on each worker, over [dispatch, finished]: the task's
    real run lies inside that span, so no overlap there means no overlap in reality."""
    points: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for r in rs:
        cores = node_cores if r.task.nodes > 1 else r.task.cores  # a gang takes whole nodes
        points[r.worker].append((r.start, cores))
        points[r.worker].append((r.end, -cores))
    peak = {}
    for w, pts in points.items():
        cur = best = 0
        for _, d in sorted(pts, key=lambda p: (p[0], p[1])):  # ends before starts at equal times
            cur += d
            best = max(best, cur)
        peak[w] = best
    return peak


def idle_while_waiting(rs: list[Run], node_cores: int, slack: float) -> list[str]:
    """Moments longer than ``slack`` where a worker had free cores a waiting task fitted in."""
    workers = {r.worker for r in rs}
    problems = []
    for w in workers:
        mine = [r for r in rs if r.worker == w]
        times = sorted({r.start for r in mine} | {r.end for r in mine})
        for a, b in zip(times, times[1:], strict=False):
            if b - a <= slack:
                continue
            mid = (a + b) / 2
            used = sum(r.task.cores for r in mine if r.start <= mid < r.end)
            free = node_cores - used
            waiting = [r for r in rs if r.ready <= a and r.start >= b and r.task.cores <= free]
            if waiting:
                problems.append(f"{w}: {free} cores free for {b - a:.2f}s while {len(waiting)} fitting task(s) waited")
    return problems
