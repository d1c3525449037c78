"""Durable payloads and the wire form of specs (what workers receive in annotations)."""

from __future__ import annotations

import pickle
import sys

import cloudpickle
import pytest
from dask._task_spec import Task

from balsam_dask.payload import _FUNCTIONS, dump_payload, dump_value, load_payload
from balsam_dask.protocol import task_spec, wire_spec
from balsam_dask.spec import Resources, TaskSpec
from balsam_dask.worker.execute import run_python

SPEC = TaskSpec(resources=Resources.serial(2, 0, 60.0), name="fit", tags=(("exp", "a"),), retries=3)


def test_payload_round_trip_of_module_functions_lambdas_and_closures() -> None:
    offset = 10
    cases = [Task("k1", abs, -3), Task("k2", lambda x: x + offset, 1), Task("k3", run_python, max, None, 4, 9)]
    for task, expected in zip(cases, [3, 11, 9], strict=True):
        spec, run_spec = load_payload(dump_payload(SPEC, task))
        assert spec == SPEC
        assert run_spec.key == task.key
        assert run_spec() == expected


def test_a_function_is_serialized_once_for_all_its_tasks() -> None:
    def f(x: int) -> int:
        return 2 * x

    payloads = [dump_payload(SPEC, Task(f"k{i}", f, i)) for i in range(50)]
    assert f in _FUNCTIONS  # cached by the function object
    assert [load_payload(p)[1]() for p in payloads] == [2 * i for i in range(50)]


def test_objects_only_cloudpickle_handles_fall_back_to_it() -> None:
    class Local:  # a class defined in a function: plain pickle cannot find it by name
        value = 7

    _spec, run_spec = load_payload(dump_payload(SPEC, Task("k", getattr, Local(), "value")))
    assert run_spec() == 7


def test_payloads_written_as_plain_cloudpickle_still_load() -> None:
    old = cloudpickle.dumps((SPEC, Task("k", abs, -5)))
    spec, run_spec = load_payload(old)
    assert spec == SPEC and run_spec() == 5


def test_specs_travel_to_workers_as_bytes() -> None:
    wire = wire_spec(SPEC)
    assert isinstance(wire, bytes)
    assert task_spec(wire) == SPEC
    assert task_spec(wire) is task_spec(wire)  # decoded once per distinct spec
    assert task_spec(SPEC) is SPEC
    assert task_spec(None) == TaskSpec()
    assert pickle.loads(wire) == SPEC


def test_a_value_pickles_by_reference_only_where_its_reader_finds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """dump_value: the C pickler for importable things; cloudpickle for a lambda and for a class
    the pickle would look up in ``__main__`` (the reader's ``__main__`` is not the writer's)."""
    plain = {"n": [1, 2.5, "x"], "spec": SPEC}
    assert dump_value(plain) == pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
    assert cloudpickle.loads(dump_value(lambda x: x + 1))(1) == 2
    main = sys.modules["__main__"]
    local = type("Brought", (), {"__module__": "__main__", "size": 3})
    monkeypatch.setattr(main, "Brought", local, raising=False)  # as a class cloudpickle brought there
    data = dump_value(local())
    monkeypatch.delattr(main, "Brought")  # the reader's __main__ has no such class
    assert cloudpickle.loads(data).size == 3
