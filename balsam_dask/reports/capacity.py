"""Allocations: their Gantt chart (queued, running, nodes released), node-hours, and the nodes,
cores and GPUs they held over time. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from balsam_dask.reports.records import AllocationSpan, StepSums, Window
from balsam_dask.reports.timeline import steps


def held_until(a: AllocationSpan, window: Window) -> float | None:
    """When the allocation stopped holding nodes (the window's end while it still runs)."""
    if a.started is None:
        return None
    return a.ended if a.ended is not None else max(window.end, a.started)


def node_changes(a: AllocationSpan, window: Window) -> list[tuple[float, float]]:
    """``(time, nodes gained or lost)``: all its nodes at the start, one less at each release,
    the rest at the end."""
    end = held_until(a, window)
    if a.started is None or end is None:
        return []
    released = sorted(t for t in a.released if a.started <= t < end)
    return [(a.started, float(a.nodes)), *((t, -1.0) for t in released), (end, -(a.nodes - len(released)))]


def node_seconds(a: AllocationSpan, window: Window) -> float:
    """Node-seconds the allocation held, from its start to its end."""
    changes = node_changes(a, window)
    total, level, prev = 0.0, 0.0, 0.0
    for t, w in changes:
        total += level * (t - prev)
        level, prev = level + w, t
    return total


def capacity(allocations: Sequence[AllocationSpan], window: Window) -> dict[str, list[StepSums] | None]:
    """Allocated nodes, cores and GPUs over the window, as per-bucket changes. Cores (GPUs) are
    None when an allocation that held nodes in the window did not record its node shape."""
    nodes: list[tuple[float, float]] = []
    cores: list[tuple[float, float]] = []
    gpus: list[tuple[float, float]] = []
    shapes_known = {"cores": True, "gpus": True}
    for a in allocations:
        changes = node_changes(a, window)
        if not changes or changes[-1][0] < window.start:
            continue
        nodes += changes
        for what, per_node, out in (("cores", a.cores_per_node, cores), ("gpus", a.gpus_per_node, gpus)):
            if per_node is None:
                shapes_known[what] = False
            else:
                out += [(t, w * per_node) for t, w in changes]
    return {
        "nodes": steps(window, nodes),
        "cores": steps(window, cores) if shapes_known["cores"] else None,
        "gpus": steps(window, gpus) if shapes_known["gpus"] else None,
    }


def queued_for(a: AllocationSpan, window: Window) -> float:
    """Seconds from submission to start (or to its end, or the window's, if it never started)."""
    if a.submitted is None:
        return math.nan
    until = a.started if a.started is not None else a.ended if a.ended is not None else window.end
    return max(0.0, until - a.submitted)


def gantt(allocations: Sequence[AllocationSpan], window: Window) -> pd.DataFrame:
    """One row per allocation: when it was submitted, started and ended, how long it queued and
    ran, its nodes (and those released) and the node-hours it held."""
    rows = []
    for a in allocations:
        end = held_until(a, window)
        rows.append({
            "id": a.id, "system": a.system, "job_id": a.scheduler_id, "state": a.state, "nodes": a.nodes,
            "released": len(a.released), "cores_per_node": a.cores_per_node, "gpus_per_node": a.gpus_per_node,
            "submitted": a.submitted, "started": a.started, "ended": end,
            "queued_s": queued_for(a, window),
            "running_s": end - a.started if a.started is not None and end is not None else 0.0,
            "node_hours": node_seconds(a, window) / 3600.0,
        })  # fmt: skip
    df = pd.DataFrame(rows, columns=["id", "system", "job_id", "state", "nodes", "released", "cores_per_node",
                                     "gpus_per_node", "submitted", "started", "ended", "queued_s", "running_s",
                                     "node_hours"])  # fmt: skip
    for col in ("submitted", "started", "ended"):
        df[col] = pd.to_datetime(df[col].astype(float), unit="s", utc=True)
    return df.set_index("id")
