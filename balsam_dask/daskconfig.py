"""What Dask should know of balsam_dask: its frames are not the user's.

Registered when a balsam Client starts and when a node-worker is set up (never at import): Dask
shortens tracebacks by leaving out frames of the modules in ``admin.traceback.shorten``, and
records the user's code of a computation by skipping the modules in
``distributed.diagnostics.computations.ignore-modules``.
"""

from __future__ import annotations

import dask.config

#: balsam_dask's own frames, as a regular expression on file names (Dask's form).
FRAMES = r"balsam_dask[\\\/]"
MODULE = "balsam_dask"


def register() -> None:
    """Add balsam_dask to both lists of Dask's configuration (idempotent)."""
    shorten = list(dask.config.get("admin.traceback.shorten", []) or [])
    ignore = list(dask.config.get("distributed.diagnostics.computations.ignore-modules", []) or [])
    if FRAMES in shorten and MODULE in ignore:
        return
    dask.config.update_defaults({
        "admin": {"traceback": {"shorten": [*shorten, FRAMES] if FRAMES not in shorten else shorten}},
        "distributed": {"diagnostics": {"computations": {
            "ignore-modules": [*ignore, MODULE] if MODULE not in ignore else ignore}}},
    })  # fmt: skip
