"""The client's checks of a submission, before anything reaches the scheduler: arguments
that will not pickle, functions that do not take them, Dask placement mixed with ours."""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import cloudpickle
import dask
import distributed
from dask.utils import funcname

from balsam_dask.errors import InvalidSpec, UnpicklableArgument
from balsam_dask.function import pickled
from balsam_dask.template import validate_template
from balsam_dask.worker.execute import Handlers

#: The keywords balsam_dask adds to Dask's submit and map.
BALSAM_KEYWORDS = (
    "cores", "gpus", "walltime", "timeout", "retries", "tags", "name", "priority", "isolate",
    "on_error", "on_timeout", "durable",
)  # fmt: skip
#: Dask's own placement keywords: a call with one is a plain Dask task.
DASK_PLACEMENT = ("workers", "resources", "allow_other_workers", "actor", "actors")


@contextlib.contextmanager
def naming_unpicklable(fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any], mapped: bool = False) -> Iterator[None]:
    """Dask's "Could not serialize" TypeError, as an InvalidSpec naming the argument."""
    try:
        yield
    except (TypeError, RuntimeError) as e:  # Dask's serialization or tokenization failed
        if "serializ" not in str(e) and "tokeniz" not in str(e).lower():
            raise
        for where, value in _arguments(args, kwargs, mapped):
            try:
                cloudpickle.dumps(value)
            except Exception as why:
                raise UnpicklableArgument(
                    f"{where} of {funcname(fn) if callable(fn) else 'the task'} ({type(value).__name__}) cannot be "
                    f"serialized (pickled) to travel to the workers ({type(why).__name__}: {why}); pass something "
                    "that pickles, e.g. a file path or the plain data it holds"
                ) from None
        raise


def warn_if_large(data: bytes) -> None:
    """Dask's warning for a large task graph, for the function the client sends pickled."""
    threshold = dask.utils.parse_bytes(dask.config.get("distributed.admin.large-graph-warning-threshold"))
    if len(data) > threshold:
        warnings.warn(
            f"Sending large graph of size {dask.utils.format_bytes(len(data))}: the function captures large "
            "data. Load it in the task, or scatter it (client.scatter) and pass the future",
            UserWarning, stacklevel=3,
        )  # fmt: skip


def _arguments(args: Sequence[Any], kwargs: Mapping[str, Any], mapped: bool) -> Iterator[tuple[str, Any]]:
    """Each argument with how to name it (a mapped call's iterables element by element)."""
    for i, value in enumerate(args):
        if mapped:
            for j, item in enumerate(value):
                yield f"element {j} of iterable {i}", item
        else:
            yield f"argument {i}", value
    for k, value in kwargs.items():
        yield f"keyword argument {k}=", value


def check_template(command: str | tuple[str, ...], params: dict[str, Any]) -> None:
    if isinstance(command, str):
        validate_template(command, params)
    elif params:
        raise InvalidSpec(
            "params= fill a template string such as './sim --n {n}'; a command given as a list runs unmodified"
        )


def handlers_of(on_error: Any, on_timeout: Any) -> Handlers | None:
    for label, h in (("on_error", on_error), ("on_timeout", on_timeout)):
        if h is not None and not callable(h):
            raise InvalidSpec(f"{label}={h!r} is not callable: pass a function, e.g. {label}=lambda *a: True")
    return Handlers(on_error, on_timeout) if (on_error or on_timeout) else None


#: Balsam keywords and their defaults: none may be given with Dask's own placement.
_BALSAM_DEFAULTS: dict[str, Any] = {
    "cores": 1, "gpus": 0, "walltime": None, "timeout": None, "tags": None, "name": None, "isolate": False,
    "on_error": None, "on_timeout": None, "durable": True,
}  # fmt: skip


def dask_placed(kwargs: dict[str, Any], **balsam: Any) -> bool:
    """True when the call asks for Dask's own placement (``workers=``, ``resources=``...): the
    task is then a plain Dask task. Refused with balsam resources or options."""
    asked = [k for k in DASK_PLACEMENT if k in kwargs and kwargs[k] not in (None, False)]
    if not asked:
        for k in DASK_PLACEMENT:  # Dask's defaults (workers=None...) mean nothing was asked
            kwargs.pop(k, None)
        return False
    mixed = [k for k, v in balsam.items() if v != _BALSAM_DEFAULTS[k]]
    if mixed:
        raise InvalidSpec(
            f"{asked[0]}= is Dask's placement and {mixed[0]}= is balsam_dask's: a task takes one or the other. "
            f"Use cores=..., gpus=... (balsam_dask places it) or {asked[0]}=... alone (Dask places it)"
        )
    return True


def reject_dask_placement(kwargs: dict[str, Any]) -> None:
    bad = [k for k in DASK_PLACEMENT if k in kwargs]
    if bad:
        raise InvalidSpec(
            f"{bad[0]}= is Dask's placement; apps and MPI tasks are placed by balsam_dask from their resources. "
            "Use cores=..., gpus=..., nodes=..."
        )


def check_callable(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """``fn`` cloudpickled, once its arguments are known to bind; else InvalidSpec. Only
    functions are checked: a callable object's signature may change when it is unpickled."""
    data = pickled(fn)
    if not (inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial)):
        return data
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return data  # builtins without a signature: nothing to check
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        if any(isinstance(a, distributed.Future) and a.cancelled() for a in (*args, *kwargs.values())):
            return data  # Dask says why first: a cancelled dependency
        unknown = [k for k in kwargs if k not in sig.parameters] if not _has_var_kw(sig) else []
        hint = f"; balsam keywords are {', '.join(BALSAM_KEYWORDS)}" if unknown else ""
        raise InvalidSpec(f"{funcname(fn)}{sig}: {e}{hint}") from None
    return data


def _has_var_kw(sig: inspect.Signature) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
