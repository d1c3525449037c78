"""The recorder's moves (pure: no Dask, no database): one step, a path of several, none."""

from __future__ import annotations

import itertools
from typing import Any

from balsam_dask.scheduler.recorder import Recorder, path_to
from balsam_dask.store.ops import Op, Transition
from balsam_dask.store.states import LEGAL


def recorder() -> tuple[Recorder, list[Op]]:
    ops: list[Op] = []
    return Recorder(ops.append, itertools.count(1).__next__), ops


def moves(ops: list[Op]) -> list[tuple[Any, ...]]:
    return [(t.from_state, t.to_state, t.attempt, t.worker, t.hosts, t.message) for t in ops if type(t) is Transition]


def test_one_step_records_one_event_with_its_fields() -> None:
    rec, ops = recorder()
    track = rec.new_task("k", None)
    assert rec.move(track, "READY")
    assert rec.move(track, "RUNNING", worker="tcp://w:1", hosts="h1", message="go", ts=5.0)
    assert rec.move(track, "RUN_DONE", worker="tcp://w:1", hosts="ignored")
    assert moves(ops) == [
        ("CREATED", "READY", 0, None, None, None),
        ("READY", "RUNNING", 1, "tcp://w:1", "h1", "go"),  # an attempt starts; hosts only on RUNNING
        ("RUNNING", "RUN_DONE", 1, "tcp://w:1", None, None),
    ]
    assert [t.ts for t in ops if type(t) is Transition][1] == 5.0
    assert (track.state, track.attempt, track.worker) == ("RUN_DONE", 1, "tcp://w:1")


def test_a_target_several_steps_away_records_the_shortest_legal_path() -> None:
    rec, ops = recorder()
    track = rec.new_task("k", None)
    path = path_to("CREATED", "FINISHED")
    assert path is not None and len(path) > 1
    assert rec.move(track, "FINISHED", message="computed elsewhere", first_message="first")
    got = moves(ops)
    assert [m[1] for m in got] == list(path)
    assert all(b in LEGAL[a] for a, b, *_ in got)
    assert got[0][5] == "first" and got[-1][5] == "computed elsewhere"
    assert all(m[5] is None for m in got[1:-1])
    assert track.attempt == 1  # the path went through RUNNING once


def test_an_unreachable_target_is_an_anomaly_and_writes_nothing() -> None:
    rec, ops = recorder()
    track = rec.new_task("k", None)
    rec.move(track, "KILLED")
    n = len(ops)
    assert not rec.move(track, "RUNNING")  # KILLED is final
    assert len(ops) == n and track.state == "KILLED"
    assert rec.anomalies and "no legal path KILLED -> RUNNING" in rec.anomalies[0]
    assert rec.move(track, "KILLED")  # already there: nothing to record
    assert len(ops) == n
