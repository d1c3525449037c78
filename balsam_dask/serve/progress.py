"""What ``balsam-dask serve`` shows while it runs: counts by state, tasks in flight, nodes busy.

On a terminal a live panel; elsewhere a plain line every ``every`` seconds (logs). The display
is ``balsam_dask.progress``'s (``client/progress.py``)."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from typing import Any, TextIO

from balsam_dask.client.progress import ORDER, display_for, states_text


def line(snap: dict[str, Any]) -> str:
    """One line of a snapshot (``Service._snapshot``)."""
    r = snap["report"]
    stop = " (draining)" if snap.get("stopping") else ""
    mine = f"this service: {r.finished} finished, {r.failed} failed, {r.created} created{stop}"
    return (f"serve: in flight {snap['in_flight']}, nodes {snap['busy_nodes']}/{snap['nodes']} busy; {mine} | "
            f"{states_text(snap['states'])}")  # fmt: skip


def rows(snap: dict[str, Any]) -> list[tuple[str, Any]]:
    """The live panel's rows of a snapshot."""
    r = snap["report"]
    out = [("in flight", str(snap["in_flight"])), ("nodes busy", f"{snap['busy_nodes']}/{snap['nodes']}"),
           ("this service", f"{r.finished} finished, {r.failed} failed, {r.created} created")]  # fmt: skip
    if snap.get("stopping"):
        out.append(("draining", "yes"))
    states = snap["states"]
    return out + [(s, str(states[s])) for s in ORDER if states.get(s)]


def progress_for(mode: str, stream: TextIO = sys.stderr) -> tuple[Any, AbstractContextManager[Any]]:
    """``(callback, context)`` for ``mode``: ``auto`` (live on a terminal, else plain), ``live``,
    ``plain`` or ``none``."""
    return display_for(mode, stream, "balsam-dask serve", line, rows)
