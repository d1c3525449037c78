"""``Report``: what ran, as pandas DataFrames and a summary, built from the store's aggregates. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from balsam_dask.reports import capacity, stats, timeline
from balsam_dask.reports.records import ReportData


@dataclass
class Report:
    """A run's report. DataFrames:

    - ``throughput``: tasks ended per interval (finished, failed, killed), the rate per minute,
      cumulative counts; indexed by the interval's start (UTC);
    - ``utilization``: mean busy cores, GPUs and nodes per interval against what the allocations
      held (``cores``, ``gpus``, ``nodes``) and the busy share of each (``*_used``);
    - ``delays``: histogram of run delays (READY or RESTART_READY -> RUNNING), seconds;
    - ``durations``: run durations by name (app, function, task name or key prefix);
    - ``attempts``: tasks by attempts made and final state, and the retries;
    - ``allocations``: the allocations' Gantt chart and node-hours;
    - ``states``: tasks by current state;
    - ``errors``: failed, timed-out and lost attempts and failed tasks by message.

    ``summary``: the headline figures (a dict of plain numbers and strings)."""

    throughput: pd.DataFrame
    utilization: pd.DataFrame
    delays: pd.DataFrame
    durations: pd.DataFrame
    attempts: pd.DataFrame
    allocations: pd.DataFrame
    states: pd.DataFrame
    errors: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The DataFrames by name, in the order a report shows them."""
        names = ("states", "throughput", "utilization", "delays", "durations", "attempts", "allocations", "errors")
        return {n: getattr(self, n) for n in names}


def build(data: ReportData, state_order: tuple[str, ...] = ()) -> Report:
    """The report of the store's aggregates ``data``."""
    w = data.window
    cap = capacity.capacity(data.allocations, w)
    util = timeline.utilization(w, data.busy, dict(cap))
    thr = timeline.throughput(w, data.ends)
    gantt = capacity.gantt(data.allocations, w)
    states = stats.states(data.states, state_order)
    attempts = stats.attempts(data.attempts)
    busy_core_s = timeline.integral(w, data.busy.get("cores", ()))
    held = {k: (timeline.integral(w, v) if v is not None else math.nan) for k, v in cap.items()}
    busy = {k: timeline.integral(w, data.busy.get(k, ())) for k in ("gpus", "nodes")}
    summary: dict[str, Any] = {
        "store": data.store,
        "start": w.start, "end": w.end, "interval_s": w.interval,
        "tasks": int(states["tasks"].sum()),
        "states": {str(k): int(v) for k, v in states["tasks"].items()},
        "finished": int(thr["finished"].sum()), "failed": int(thr["failed"].sum()), "killed": int(thr["killed"].sum()),
        "peak_per_minute": float(thr["per_minute"].max()) if len(thr) else 0.0,
        "runs": int(data.delays.totals.n) if data.delays.totals else 0,
        "retries": int(attempts["retries"].sum()) if len(attempts) else 0,
        "busy_core_hours": busy_core_s / 3600.0,
        "allocated_core_hours": held["cores"] / 3600.0,
        "utilization": _share(busy_core_s, held["cores"]),
        "gpu_utilization": _share(busy["gpus"], held["gpus"]),
        "node_utilization": _share(busy["nodes"], held["nodes"]),
        "node_hours": float(gantt["node_hours"].sum()) if len(gantt) else 0.0,
        "allocations": len(gantt),
        "delay_s": stats.summary(data.delays),
        "errors": len(data.errors),
        "notes": list(data.notes),
    }  # fmt: skip
    return Report(
        throughput=thr, utilization=util, delays=stats.histogram(data.delays, data.delay_edges),
        durations=stats.durations(data.durations), attempts=attempts, allocations=gantt, states=states,
        errors=stats.errors(data.errors), summary=summary,
    )  # fmt: skip


def _share(busy: float, held: float) -> float:
    """``busy / held``, NaN when nothing (or an unknown amount) was held."""
    return busy / held if held and not math.isnan(held) else math.nan
