"""Reports of a scripted run with every time known (tests/reports/scripted.py), on SQLite and
PostgreSQL: exact throughput per interval, utilization, delays, node-hours and error groups."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import balsam_dask
from balsam_dask.errors import InvalidSpec, InvalidTags
from balsam_dask.spec import TaskSpec
from balsam_dask.store import NewTask, Store, Transition
from tests.reports.scripted import BOOM, LOST, B, build


@pytest.fixture
def scripted(store: Store) -> tuple[Store, dict[str, int]]:
    return store, build(store)


def test_throughput_per_interval_and_cumulative(scripted: tuple[Store, dict[str, int]]) -> None:
    store, _ = scripted
    r = store.report(interval=10)
    t = r.throughput
    assert list(t.index) == list(pd.to_datetime([B + 10 * k for k in range(10)], unit="s", utc=True))
    assert list(t["finished"]) == [0, 0, 0, 0, 1, 1, 1, 0, 0, 1]  # t6 at +100: the window's end, last interval
    assert list(t["failed"]) == [0] * 7 + [1, 0, 0]
    assert list(t["killed"]) == [0] * 8 + [1, 0]
    assert list(t["cumulative_ended"]) == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    assert list(t["per_minute"]) == [0, 0, 0, 0, 6, 6, 6, 0, 0, 6]
    s = r.summary
    assert (s["start"], s["end"], s["interval_s"]) == (B, B + 100, 10.0)
    assert (s["tasks"], s["finished"], s["failed"], s["killed"]) == (6, 4, 1, 1)


def test_utilization_against_the_allocation(scripted: tuple[Store, dict[str, int]]) -> None:
    store, _ = scripted
    r = store.report(interval=10)
    u = r.utilization
    assert list(u["busy_cores"]) == pytest.approx([0, 2, 6, 6.5, 4.5, 1, 2.5, 1, 1, 0.5])
    assert list(u["cores"]) == pytest.approx([8] * 8 + [4, 4])  # a node released at +80
    assert list(u["busy_nodes"]) == pytest.approx([0, 1, 2, 2, 1.5, 1, 1.5, 1, 1, 0.5])
    assert list(u["nodes"]) == pytest.approx([2] * 8 + [1, 1])
    assert list(u["busy_gpus"]) == pytest.approx([0] * 10)
    assert list(u["cores_used"]) == pytest.approx([0, 0.25, 0.75, 6.5 / 8, 4.5 / 8, 1 / 8, 2.5 / 8, 1 / 8, 0.25, 0.125])
    s = r.summary
    assert s["busy_core_hours"] == pytest.approx(250 / 3600)
    assert s["allocated_core_hours"] == pytest.approx(720 / 3600)
    assert s["utilization"] == pytest.approx(250 / 720)
    assert s["node_utilization"] == pytest.approx(115 / 180)
    assert math.isnan(s["gpu_utilization"])  # no GPU held
    assert s["notes"] == []


def test_allocations_gantt_and_node_hours(scripted: tuple[Store, dict[str, int]]) -> None:
    store, _ = scripted
    a = store.report().allocations
    assert len(a) == 1
    row = a.iloc[0]
    assert (row["system"], row["job_id"], row["nodes"], row["released"], row["cores_per_node"]) == ("slurm", "4242",
                                                                                                   2, 1, 4)  # fmt: skip
    assert row["started"] == pd.Timestamp(B - 10, unit="s", tz="UTC")
    assert (row["queued_s"], row["running_s"]) == (20, 110)
    assert row["node_hours"] == pytest.approx(200 / 3600)  # 2 nodes for 90 s, 1 for 20 s
    assert store.report().summary["node_hours"] == pytest.approx(200 / 3600)


def test_delays_durations_attempts_states(scripted: tuple[Store, dict[str, int]]) -> None:
    store, _ = scripted
    r = store.report(interval=10)
    d = r.summary["delay_s"]  # 10, 20, 30 and 10 (t3's retry), 60, 70 and 5 (t6's second attempt)
    assert d == pytest.approx({"count": 7, "mean": 205 / 7, "min": 5, "median": 20, "p90": 64, "max": 70})
    h = r.delays
    assert [(lo, hi, n) for lo, hi, n in h.itertuples(index=False)] == [(5, 10, 1), (10, 20, 2), (20, 50, 2),
                                                                        (50, 100, 2)]  # fmt: skip
    du = r.durations
    assert list(du.index) == ["sim", "post"]
    assert du.loc["sim"].to_dict() == pytest.approx({"runs": 5, "mean_s": 19, "min_s": 5, "max_s": 30,
                                                     "hours": 95 / 3600, "core_hours": 225 / 3600})  # fmt: skip
    assert du.loc["post"].to_dict() == pytest.approx({"runs": 2, "mean_s": 12.5, "min_s": 5, "max_s": 20,
                                                      "hours": 25 / 3600, "core_hours": 25 / 3600})  # fmt: skip
    at = r.attempts
    assert at.loc[0].to_dict() == {"finished": 0, "failed": 0, "killed": 1, "other": 0, "tasks": 1, "retries": 0}
    assert at.loc[1].to_dict() == {"finished": 2, "failed": 1, "killed": 0, "other": 0, "tasks": 3, "retries": 0}
    assert at.loc[2].to_dict() == {"finished": 2, "failed": 0, "killed": 0, "other": 0, "tasks": 2, "retries": 2}
    assert (r.summary["runs"], r.summary["retries"]) == (7, 2)
    assert r.states["tasks"].to_dict() == {"FINISHED": 4, "FAILED": 1, "KILLED": 1}


def test_errors_grouped_by_message(scripted: tuple[Store, dict[str, int]]) -> None:
    store, ids = scripted
    e = store.report().errors
    assert e.to_dict("records") == [
        {"state": "RUN_ERROR", "message": BOOM, "events": 2, "tasks": 2, "examples": sorted([ids["t3"], ids["t4"]])},
        {"state": "LOST", "message": LOST, "events": 1, "tasks": 1, "examples": [ids["t6"]]},
    ]


def test_the_report_leaves_pooled_connections_as_the_engine_made_them(scripted: tuple[Store, dict[str, int]]) -> None:
    """On SQLite the report sorts in temporary files; the store's other work keeps them in memory."""
    store, _ = scripted
    store.report()
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as conn:  # the pool hands out the connection the report used
            assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY


def test_filters_and_window(scripted: tuple[Store, dict[str, int]]) -> None:
    store, _ = scripted
    post = store.report(tags={"exp": "b"}, interval=10)
    assert post.summary["tasks"] == 1 and post.summary["finished"] == 1
    assert list(post.utilization["busy_cores"]) == pytest.approx([0] * 7 + [1, 1, 0.5])
    assert list(post.durations.index) == ["post"]
    assert store.report(name="s*").summary["tasks"] == 5
    assert store.report(name="post").summary["runs"] == 2
    assert store.report(app="nothing").summary["tasks"] == 0
    # a window inside the run: runs clipped to it, delays of the runs started in it
    w = store.report(since=B + 40, until=B + 80, interval=10)
    assert (w.summary["start"], w.summary["end"]) == (B + 40, B + 80)
    assert list(w.utilization["busy_cores"]) == pytest.approx([4.5, 1, 2.5, 1])
    assert list(w.utilization["busy_nodes"]) == pytest.approx([1.5, 1, 1.5, 1])
    assert w.summary["utilization"] == pytest.approx(90 / 320)
    assert w.summary["delay_s"]["count"] == 3 and w.summary["delay_s"]["median"] == 60  # t3's retry, t4, t6
    assert list(w.throughput["ended"]) == [1, 1, 1, 2]  # t1 at +40 ... t4 at +70 and t5 killed at +80
    assert w.durations.loc["sim", "runs"] == 4 and "post" not in w.durations.index


def test_durations_by_name_stem(store: Store) -> None:
    """Names numbered per task (``fit-7``, ``fit_12``) count under their stem; others as they are."""
    names = ["fit-7", "fit_12", "fit.3", "resnet50", "x-", "-4"]
    ids = store.create_tasks([NewTask(0, f"k{i}", TaskSpec(name=n), created_at=B) for i, n in enumerate(names)])
    ops = []
    for i, tid in enumerate(ids):
        for frm, to, at in (("CREATED", "READY", 0), ("READY", "RUNNING", 1), ("RUNNING", "RUN_DONE", 2 + i)):
            ops.append(Transition(store.new_id(), tid, frm, to, B + at, 0 if frm == "CREATED" else 1, "node-0"))
    store.apply(ops)
    d = store.report().durations
    assert sorted(d.index) == ["-4", "fit", "resnet50", "x-"] and d.loc["fit", "runs"] == 3


def test_the_interval_is_chosen_from_the_span(scripted: tuple[Store, dict[str, int]]) -> None:
    store, _ = scripted
    r = store.report()
    assert r.summary["interval_s"] == 1.0 and len(r.throughput) == 100
    assert r.summary["utilization"] == pytest.approx(250 / 720)  # the same whatever the interval


def test_an_empty_store(store: Store) -> None:
    r = store.report()
    assert r.summary["tasks"] == 0 and r.summary["runs"] == 0 and math.isnan(r.summary["utilization"])
    assert len(r.throughput) == 1 and r.errors.empty and r.allocations.empty
    assert "no allocation was recorded in this window: utilization is unknown" in r.summary["notes"]


def test_balsam_dask_report_opens_a_url_read_only(scripted: tuple[Store, dict[str, int]]) -> None:
    store, _ = scripted
    r = balsam_dask.report(store.url.render_as_string(hide_password=False), interval=10)
    assert r.summary["utilization"] == pytest.approx(250 / 720)
    assert balsam_dask.report(store).summary["tasks"] == 6


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (
            {"since": "yesterday"},
            InvalidSpec,
            r"since='yesterday' is invalid: give an ISO time, epoch seconds or an age",
        ),
        ({"until": float("nan")}, InvalidSpec, r"until=nan is invalid"),
        ({"since": B + 50, "until": B + 10}, InvalidSpec, r"until=1700000010.0 is invalid: give a time after since="),
        ({"tags": {"9x": 1}}, InvalidTags, r"tag name '9x' is invalid"),
        ({"tags": "exp=a"}, InvalidTags, r"tags='exp=a' is invalid"),
        ({"interval": -1}, InvalidSpec, r"interval=-1 is invalid: give a positive duration"),
        ({"interval": "often"}, InvalidSpec, r"interval='often' is invalid"),
        ({"app": ""}, InvalidSpec, r"app='' is invalid: give a non-empty string"),
        ({"name": 3}, InvalidSpec, r"name=3 is invalid"),
        ({"interval": 0.0001}, InvalidSpec, r"interval=0.0001 is invalid: give at least 0.001 seconds"),
    ],
)
def test_bad_options_name_the_value(scripted: tuple[Store, dict[str, int]], options: dict[str, object],
                                    error: type[Exception], match: str) -> None:  # fmt: skip
    store, _ = scripted
    with pytest.raises(error, match=match):
        store.report(**options)  # type: ignore[arg-type]
    if "interval" not in options or options["interval"] != 0.0001:  # that one needs the store's span
        with pytest.raises(error, match=match):
            balsam_dask.report("/nonexistent/dir/store.db", **options)


def test_a_task_running_now_and_a_run_end_that_does_not_name_its_node(store: Store) -> None:
    """A task still running counts as busy until the window's end; a run whose end event does not
    name its worker (written by whoever saw it end without knowing where it ran) counts on the
    node its start named: two overlapping runs on node-0 keep one node busy, not two."""
    a, b = store.create_tasks([NewTask(0, f"k{i}", TaskSpec(name="sim"), created_at=B - 5) for i in range(2)])
    steps = [(a, "CREATED", "READY", -1, 0, None), (a, "READY", "RUNNING", 0, 1, "node-0"),
             (a, "RUNNING", "RUN_DONE", 10, 1, None), (a, "RUN_DONE", "FINISHED", 10, 1, None),
             (b, "CREATED", "READY", -1, 0, None), (b, "READY", "RUNNING", 5, 1, "node-0")]  # fmt: skip
    store.apply([Transition(store.new_id(), t, frm, to, B + at, att, w) for t, frm, to, at, att, w in steps])
    r = store.report(since=B, until=B + 40, interval=10)
    assert list(r.utilization["busy_cores"]) == pytest.approx([1.5, 1, 1, 1])
    assert list(r.utilization["busy_nodes"]) == pytest.approx([1, 1, 1, 1])
    assert r.summary["delay_s"]["count"] == 2 and r.summary["delay_s"]["max"] == 6
    assert r.durations.loc["sim"].to_dict()["runs"] == 1
