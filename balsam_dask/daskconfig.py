"""What Dask should know of balsam_dask: its frames are not the user's.

Registered when a balsam Client starts and when a node-worker is set up (never at import): Dask
shortens tracebacks by leaving out frames of the modules in ``admin.traceback.shorten``, and
records the user's code of a computation by skipping the modules in
``distributed.diagnostics.computations.ignore-modules``. The functions balsam tasks run leave
their own frames out of a task's error (:func:`user_traceback`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import dask.config

#: balsam_dask's own frames, as a regular expression on file names (Dask's form).
FRAMES = r"balsam_dask[\\\/]"
MODULE = "balsam_dask"
_LISTS = (("admin.traceback.shorten", FRAMES), ("distributed.diagnostics.computations.ignore-modules", MODULE))


def register() -> None:
    """Add balsam_dask to both lists of Dask's configuration, as they are now (idempotent).

    Set in the configuration in force, not in Dask's defaults: a configuration reset to an
    earlier copy, or refreshed, loses what was added since (Dask's defaults never override a
    value that differs from the old defaults, nor a list its first defaults gave), and the
    next call adds it again."""
    missing: dict[str, list[Any]] = {}
    for name, entry in _LISTS:
        current = list(dask.config.get(name, []) or [])
        if entry not in current:
            missing[name] = [*current, entry]
    if missing:
        dask.config.set(missing)  # not as a context manager: it stays set


_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_F = TypeVar("_F", bound=Callable[..., Any])


def user_traceback(fn: _F) -> _F:
    """For the function a task runs: an error leaves it with balsam_dask's leading frames left
    out of its traceback (the last frame is always kept). Dask's workers leave their own frames
    out of what they send back, and its clients shorten tracebacks only when they wait
    synchronously: so the user's frames come first in every case."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            tb = e.__traceback__
            while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_DIR):
                tb = tb.tb_next
            e.__traceback__ = tb
            raise  # a bare raise adds no frame of this function

    return call  # type: ignore[return-value]
