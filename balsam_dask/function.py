"""A balsam task's Python function on its way from the client to the worker.
(Design notes: docs/ARCHITECTURE.md, function.py.)
"""

from __future__ import annotations

import pickle
import threading
import zlib
from collections.abc import Callable
from typing import Any

import cloudpickle
from dask.utils import funcname

from balsam_dask.errors import FunctionLoadError, InvalidSpec

#: Distinct functions each worker process keeps unpickled.
CACHE_SIZE = 256


class PickledFunction:
    """A by-value function as compressed cloudpickle bytes; ``name`` names it in messages."""

    __slots__ = ("data", "name")

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (PickledFunction, (self.data, self.name))

    def __repr__(self) -> str:
        return f"<PickledFunction {self.name} ({len(self.data)} bytes)>"


def pickled(fn: Callable[..., Any]) -> bytes:
    """``fn`` cloudpickled, or :class:`InvalidSpec` naming why it cannot be."""
    if not callable(fn):
        raise InvalidSpec(f"{fn!r} is not callable: submit(fn, *args) takes a function first")
    try:
        return cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise InvalidSpec(
            f"function {funcname(fn)} cannot be pickled ({type(e).__name__}: {e}); define it at module level "
            "or avoid capturing locks, sockets or open files"
        ) from None


def by_reference(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` travels as itself: the C pickler takes it by reference (an importable
    name), the result does not name ``__main__`` (Dask would cloudpickle it again) and its
    module is not one the user registered with ``cloudpickle.register_pickle_by_value``."""
    if getattr(fn, "__module__", None) in cloudpickle.list_registry_pickle_by_value():
        return False
    try:
        data = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return b"__main__" not in data


def pack(fn: Callable[..., Any], data: bytes) -> Callable[..., Any] | PickledFunction:
    """What the task carries: ``fn`` itself if it pickles by reference, else its ``data``
    (from :func:`pickled`) compressed."""
    if by_reference(fn):
        return fn
    return PickledFunction(zlib.compress(data, 1), funcname(fn))


_loaded: dict[bytes, Callable[..., Any]] = {}  # oldest first
_lock = threading.Lock()
_loads = 0


def unpack(fn: Callable[..., Any] | PickledFunction) -> Callable[..., Any]:
    """The function a task runs: unpickled once per distinct function and process, also
    when several of the worker's threads start its first tasks at once."""
    if type(fn) is not PickledFunction:
        return fn  # type: ignore[return-value]
    loaded = _loaded.get(fn.data)
    if loaded is None:
        global _loads
        with _lock:
            loaded = _loaded.get(fn.data)
            if loaded is None:
                try:
                    loaded = cloudpickle.loads(zlib.decompress(fn.data))
                except Exception as e:  # e.g. a module it uses is not installed where it runs
                    raise FunctionLoadError(
                        f"cannot load the task's function {fn.name} in this worker's process "
                        f"({type(e).__name__}: {e}); install what it uses on the workers, or define "
                        "it in a module they import"
                    ) from e
                _loads += 1
                if len(_loaded) >= CACHE_SIZE:
                    del _loaded[next(iter(_loaded))]
                _loaded[fn.data] = loaded
    return loaded


def loads() -> int:
    """How many functions this process has unpickled so far."""
    return _loads


def restored(data: bytes) -> Any:
    """A finished task's stored result, as the task that stands in for it when Dask would
    compute the task again (its result was lost with a worker)."""
    return cloudpickle.loads(data)
