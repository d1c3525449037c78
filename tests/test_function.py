"""How a balsam task's function travels: by reference as Dask sends it, or pickled once per call."""

from __future__ import annotations

import pickle
import sys
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle
import distributed.protocol.pickle as dask_pickle
import pytest
from dask._task_spec import Task

from balsam_dask.errors import FunctionLoadError, InvalidSpec
from balsam_dask.function import PickledFunction, by_reference, loads, pack, pickled, unpack
from balsam_dask.payload import dump_payload, load_payload
from balsam_dask.spec import Resources, TaskSpec
from balsam_dask.worker.execute import run_python


def double(x: int) -> int:
    return 2 * x


def _script_function() -> Any:
    """A function as defined in a user's script: it pickles by value, like a closure."""

    def triple(x: int) -> int:
        return 3 * x

    triple.__module__ = "__main__"
    triple.__qualname__ = "triple"
    return triple


def test_importable_functions_travel_as_themselves() -> None:
    for fn in (double, abs, run_python):
        assert by_reference(fn)
        assert pack(fn, pickled(fn)) is fn
        assert unpack(fn) is fn


def test_script_functions_closures_and_lambdas_travel_as_bytes() -> None:
    k = 5
    cases: list[tuple[Any, int]] = [(_script_function(), 6), (lambda x: x + k, 7), ((lambda x: x * k), 10)]
    for fn, expected in cases:
        assert not by_reference(fn)
        packed = pack(fn, pickled(fn))
        assert type(packed) is PickledFunction
        assert repr(packed).startswith("<PickledFunction ")
        assert unpack(pickle.loads(pickle.dumps(packed)))(2) == expected


def test_functions_of_modules_registered_by_value_travel_as_bytes() -> None:
    module = types.ModuleType("balsam_test_by_value")
    exec("def quadruple(x):\n    return 4 * x\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        fn = module.quadruple
        assert by_reference(fn)  # importable here
        cloudpickle.register_pickle_by_value(module)
        try:
            assert not by_reference(fn)  # the user asked for it by value: a worker may lack the module
            packed = pack(fn, pickled(fn))
            assert type(packed) is PickledFunction
        finally:
            cloudpickle.unregister_pickle_by_value(module)
    finally:
        del sys.modules[module.__name__]
    assert unpack(pickle.loads(pickle.dumps(packed)))(2) == 8  # without the module


def test_a_function_that_cannot_be_loaded_is_named() -> None:
    module = types.ModuleType("balsam_test_missing")
    exec("class Model:\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        model = module.Model()

        def predict(x: int) -> int:  # by value, but it refers to a class of a module the worker lacks
            return x if model else 0

        packed = pack(predict, pickled(predict))
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(
        FunctionLoadError, match=r"function predict .*ModuleNotFoundError.*'balsam_test_missing'"
    ) as info:
        unpack(packed)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_a_task_message_needs_no_cloudpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    fn = _script_function()
    packed = pack(fn, pickled(fn))
    task = Task("triple-1", run_python, packed, None, 4)

    def refuse(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("cloudpickle was called")

    with monkeypatch.context() as m:
        m.setattr(dask_pickle.cloudpickle, "dumps", refuse)
        message = dask_pickle.dumps(task)  # what the scheduler does for every compute-task
        with pytest.raises(AssertionError, match="cloudpickle was called"):
            dask_pickle.dumps(Task("triple-2", run_python, fn, None, 4))  # the function itself: by value
    out = dask_pickle.loads(message)
    assert type(out.args[0]) is PickledFunction
    assert unpack(out.args[0])(4) == 12


def test_each_distinct_function_is_unpickled_once_per_process() -> None:
    token = uuid.uuid4().hex  # bytes no earlier test has loaded

    def fn(x: int) -> tuple[str, int]:
        return token, x

    data = pickled(fn)
    messages = [pickle.dumps(pack(fn, data)) for _ in range(20)]  # 20 tasks: 20 separate bytes objects
    before = loads()
    with ThreadPoolExecutor(8) as pool:  # a worker's threads starting its first tasks at once
        loaded = set(pool.map(lambda m: id(unpack(pickle.loads(m))), messages))
    assert len(loaded) == 1
    assert loads() - before == 1


def test_bytes_are_made_per_call_so_captured_values_are_current() -> None:
    box = {"n": 1}

    def read() -> int:
        return box["n"]

    first = pack(read, pickled(read))
    box["n"] = 2
    second = pack(read, pickled(read))
    assert unpack(first)() == 1  # as Dask: the value when the task was submitted
    assert unpack(second)() == 2


def test_durable_payload_keeps_a_pickled_function() -> None:
    fn = _script_function()
    spec = TaskSpec(resources=Resources.serial(1, 0, None))
    run_spec = Task("triple-3", run_python, pack(fn, pickled(fn)), None, 5)
    _spec, loaded = load_payload(dump_payload(spec, run_spec))
    assert type(loaded.args[0]) is PickledFunction
    assert unpack(loaded.args[0])(5) == 15


def test_unpicklable_functions_are_refused_by_name() -> None:
    import threading

    lock = threading.Lock()

    def holds_lock() -> bool:
        return lock.locked()

    with pytest.raises(InvalidSpec, match=r"function holds_lock cannot be pickled \(TypeError: .*lock"):
        pickled(holds_lock)
    with pytest.raises(InvalidSpec, match="3 is not callable"):
        pickled(3)  # type: ignore[arg-type]
    assert cloudpickle.loads(pickled(double))(4) == 8
