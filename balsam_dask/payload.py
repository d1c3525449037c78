"""Durable payloads: a balsam task's spec and Dask run_spec, serialized for resuming.

Every durable task is serialized once, in the scheduler process (the feeder thread of the
store writer), so its cost is paid per task on the scheduler's GIL. ``cloudpickle`` of a
whole run_spec is a pure-Python pickler; here the structure goes through the C pickler
and only functions go through cloudpickle, once per function object: the tasks of one
``map`` share their function, so it is serialized once, not once per task. The bytes of
each function are embedded in every payload (a payload stands alone in the store).
A function the balsam client sent by value is already bytes here (``balsam_dask.function``).
"""

from __future__ import annotations

import io
import pickle
import types
import weakref
from typing import Any

import cloudpickle

_FUNCTIONS: weakref.WeakKeyDictionary[types.FunctionType, bytes] = weakref.WeakKeyDictionary()


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> bytes | None:
        if type(obj) is not types.FunctionType:
            return None
        data = _FUNCTIONS.get(obj)
        if data is None:
            data = _FUNCTIONS[obj] = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return data


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return cloudpickle.loads(pid)


def dump_payload(spec: Any, run_spec: Any) -> bytes:
    """The serialized task (spec and Dask run_spec) kept for resuming after a crash."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump((spec, run_spec))
    except Exception:  # something only cloudpickle can serialize (a local class, ...)
        return cloudpickle.dumps((spec, run_spec), protocol=pickle.HIGHEST_PROTOCOL)
    return buf.getvalue()


def dump_value(value: Any) -> bytes:
    """A task's value as it is stored and sent back: the C pickler (cloudpickle's Pickler costs
    ~20 us to set up, most of what pickling a small result costs), cloudpickle where that fails or
    where the pickle refers to ``__main__`` (a class the task's function brought by value: the
    reader's ``__main__`` is not the worker's). Either way ``cloudpickle.loads`` reads it."""
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    if b"__main__" in data:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def load_payload(data: bytes) -> tuple[Any, Any]:
    """``(spec, run_spec)`` from :func:`dump_payload` bytes (or a plain cloudpickle of them)."""
    spec, run_spec = _Unpickler(io.BytesIO(data)).load()
    return spec, run_spec
