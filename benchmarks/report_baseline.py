"""``report_bench.py``'s baseline: every task and event read with the raw driver into pandas and
the report's aggregates computed there (the same definitions as ``store/reportsql.py``)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import make_url

from balsam_dask.reports.frames import Report, build
from balsam_dask.reports.records import (
    DELAY_EDGES,
    QUANTILES,
    AllocationSpan,
    AttemptCount,
    BinCount,
    EndCount,
    ErrorGroup,
    Ranked,
    ReportData,
    ReportQuery,
    Sample,
    StateCount,
    StepSums,
    Totals,
)
from balsam_dask.reports.window import window_for
from balsam_dask.store.states import ALL_STATES

TASK_COLS = ["id", "state", "attempt", "cores", "gpus", "nodes", "app", "function", "name", "key", "created_at",
             "updated_at"]  # fmt: skip
EVENT_COLS = ["task_id", "id", "attempt", "from_state", "to_state", "ts", "worker", "message"]
ALLOC_COLS = ["id", "system", "scheduler_id", "state", "nodes", "info", "submitted_at", "started_at", "ended_at"]
END = ["FINISHED", "FAILED", "KILLED"]


def pg_conninfo(url: str) -> dict[str, Any]:
    u = make_url(url)
    info: dict[str, Any] = {"host": u.host or "127.0.0.1", "port": u.port or 5432, "user": u.username,
                            "dbname": u.database}  # fmt: skip
    if "options" in u.query:
        info["options"] = u.query["options"]
    return info


def load(url: str) -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[Any, ...]]]:
    """Every task, event and allocation, read with the raw driver."""
    queries = [f"SELECT {', '.join(TASK_COLS)} FROM tasks", f"SELECT {', '.join(EVENT_COLS)} FROM events",
               f"SELECT {', '.join(ALLOC_COLS)} FROM allocations"]  # fmt: skip
    if url.startswith("sqlite"):
        import sqlite3

        conn: Any = sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True)
    else:
        import psycopg

        conn = psycopg.connect(**pg_conninfo(url))
    try:
        tasks, events, allocs = (conn.execute(q).fetchall() for q in queries)
    finally:
        conn.close()
    return pd.DataFrame(tasks, columns=TASK_COLS), pd.DataFrame(events, columns=EVENT_COLS), allocs


def steps(x: pd.Series, w: pd.Series, t0: float, dt: float) -> dict[int, tuple[float, float]]:
    b = np.floor((x - t0) / dt).astype(np.int64)
    area = w * (t0 + (b + 1) * dt - x)
    g = pd.DataFrame({"b": b, "c": w, "a": area}).groupby("b").sum()
    return {int(k): (float(r.c), float(r.a)) for k, r in g.iterrows()}


def merged(*parts: dict[int, tuple[float, float]]) -> tuple[StepSums, ...]:
    out: dict[int, list[float]] = {}
    for p in parts:
        for b, (c, a) in p.items():
            acc = out.setdefault(b, [0.0, 0.0])
            acc[0] += c
            acc[1] += a
    return tuple(StepSums(b, c, a) for b, (c, a) in sorted(out.items()))


def report(url: str) -> Report:
    tk, ev, alloc_rows = load(url)
    states = tuple(StateCount(str(s), int(n)) for s, n in tk["state"].value_counts().items())
    g = tk.assign(**{s.lower(): tk["state"] == s for s in END}).groupby("attempt")
    att = g.agg(n=("id", "size"), finished=("finished", "sum"), failed=("failed", "sum"), killed=("killed", "sum"),
                lo=("created_at", "min"), hi=("updated_at", "max"))  # fmt: skip
    attempts = tuple(AttemptCount(int(a), int(r.n), int(r.finished), int(r.failed), int(r.killed), float(r.lo),
                                  float(r.hi)) for a, r in att.iterrows())  # fmt: skip
    w = window_for(float(tk["created_at"].min()), float(tk["updated_at"].max()))
    t0, t1, dt = w.start, w.end, w.interval
    inside = (ev["ts"] >= t0) & (ev["ts"] <= t1)
    end_rows = ev[ev["to_state"].isin(END) & (ev["from_state"] != ev["to_state"]) & inside]
    b = np.floor((end_rows["ts"] - t0) / dt).astype(np.int64)
    ends = tuple(
        EndCount(int(k), str(s), int(n)) for (k, s), n in end_rows.groupby([b, end_rows["to_state"]]).size().items()
    )
    # runs: each RUNNING event, the first event leaving RUNNING in its attempt, the last READY of the attempt before
    start = ev[(ev["to_state"] == "RUNNING") & (ev["ts"] <= t1)][["task_id", "attempt", "ts", "worker"]]
    stop = ev[ev["from_state"] == "RUNNING"].groupby(["task_id", "attempt"])["ts"].min().rename("e0")
    ready = ev[ev["to_state"].isin(["READY", "RESTART_READY"])].groupby(["task_id", "attempt"])["ts"].max()
    ready = ready.rename("q0").reset_index().assign(attempt=lambda r: r["attempt"] + 1)
    runs = start.join(stop, on=["task_id", "attempt"]).rename(columns={"ts": "s0"})
    runs = runs.merge(ready, on=["task_id", "attempt"], how="left")
    bare = tk["name"].str.rstrip("0123456789")
    cut = bare.str[-1:].isin(["-", "_", "."]) & (bare.str.len() > 1) & (bare.str.len() < tk["name"].str.len())
    stem = bare.str[:-1].where(cut, tk["name"])
    label = tk["app"].fillna(tk["function"]).fillna(stem)
    prefix = tk["key"].str.split("-", n=1).str[0].where(tk["key"].str.find("-") > 0)
    tk = tk.assign(label=label.fillna(prefix).fillna(tk["key"]), c=tk["cores"] * tk["nodes"],
                   g=tk["gpus"] * tk["nodes"])  # fmt: skip
    runs = runs.merge(tk[["id", "c", "g", "nodes", "label"]], left_on="task_id", right_on="id")
    runs["worker"] = runs["worker"].fillna("")
    live = runs[runs["e0"].isna() | (runs["e0"] >= t0)]
    s = live["s0"].clip(lower=t0)
    e = live["e0"].fillna(t1).clip(upper=t1)
    cores = merged(steps(s, live["c"], t0, dt), steps(e, -live["c"], t0, dt))
    gpus = merged(steps(s, live["g"], t0, dt), steps(e, -live["g"], t0, dt))
    isl = pd.DataFrame({"worker": live["worker"], "s": s, "e": e}).sort_values(["worker", "s", "e"])
    by = isl.groupby("worker", sort=False)
    isl["m"], isl["next"], isl["before"] = by["e"].cummax(), by["s"].shift(-1), by["s"].shift(1)
    ended = isl["next"].isna() | (isl["next"] > isl["m"])
    gap = isl["next"] > isl["m"]
    node_x = pd.concat([isl["s"][isl["before"].isna()], isl["m"][ended], isl["next"][gap]], ignore_index=True)
    counts = (int(isl["before"].isna().sum()), int(ended.sum()), int(gap.sum()))
    node_w = pd.Series([1.0] * counts[0] + [-1.0] * counts[1] + [1.0] * counts[2])
    nodes = merged(steps(s, live["nodes"] - 1, t0, dt), steps(e, 1 - live["nodes"], t0, dt),
                   steps(node_x, node_w, t0, dt))  # fmt: skip
    d = np.sort((runs["s0"] - runs["q0"])[runs["q0"].notna() & (runs["s0"] >= t0)].to_numpy())
    ranked = []
    for p in QUANTILES:
        k = math.floor(max(len(d) - 1, 0) * p)
        ranked += [Ranked("", k + 1 + j, len(d), float(v)) for j, v in enumerate(d[k : k + 2])]
    bins = np.searchsorted(np.array(DELAY_EDGES), d, side="right")
    keys, counts_ = np.unique(bins, return_counts=True)
    totals = Totals("", len(d), float(d.sum()), float(d.min()), float(d.max()), 0.0) if len(d) else None
    hist = tuple(BinCount("", int(k), int(n)) for k, n in zip(keys, counts_, strict=True))
    delays = Sample(totals, tuple(ranked), hist)
    done = runs[runs["e0"].notna() & (runs["e0"] >= t0) & (runs["e0"] <= t1)]
    v = done["e0"] - done["s0"]
    per = pd.DataFrame({"label": done["label"], "v": v, "cv": v * done["c"]}).groupby("label")
    agg = per.agg(n=("v", "size"), tot=("v", "sum"), lo=("v", "min"), hi=("v", "max"), cs=("cv", "sum"))
    durations = {str(k): Sample(Totals(str(k), int(r.n), float(r.tot), float(r.lo), float(r.hi), float(r.cs)))
                 for k, r in agg.iterrows()}  # fmt: skip
    attempt_errors = ev["to_state"].isin(["RUN_ERROR", "RUN_TIMEOUT"])
    lost = (ev["to_state"] == "RESTART_READY") & (ev["from_state"] == "RUNNING")
    failed = (ev["to_state"] == "FAILED") & ~ev["from_state"].isin(["RUN_ERROR", "RUN_TIMEOUT"])
    errs = ev[inside & (attempt_errors | lost | failed)]
    errs = errs.assign(st=errs["to_state"].where(errs["to_state"] != "RESTART_READY", "LOST"))
    errors = []
    for (st, msg), grp in errs.groupby(["st", "message"], dropna=False):
        ids = sorted(grp["task_id"].unique())
        errors.append(ErrorGroup(str(st), None if pd.isna(msg) else str(msg), len(grp), len(ids),
                                 tuple(int(i) for i in ids[:3])))  # fmt: skip
    allocations = []
    for aid, system, sid, state, n, info, sub, began, ended_at in alloc_rows:
        info = json.loads(info) if isinstance(info, str) else info or {}
        if (sub is None or sub <= t1) and (ended_at is None or ended_at >= t0):
            allocations.append(AllocationSpan(aid, system, sid, state, n, info.get("cores_per_node"),
                                              info.get("gpus_per_node"), sub, began, ended_at,
                                              tuple(r["at"] for r in info.get("released") or ())))  # fmt: skip
    data = ReportData(
        query=ReportQuery(), window=w, states=states, attempts=attempts, ends=ends,
        busy={"cores": cores, "gpus": gpus, "nodes": nodes}, delays=delays, delay_edges=DELAY_EDGES,
        durations=durations, errors=tuple(errors), allocations=tuple(sorted(allocations)), store=url,
    )  # fmt: skip
    return build(data, ALL_STATES)
