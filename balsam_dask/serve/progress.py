"""What ``balsam-dask serve`` shows while it runs: counts by state, tasks in flight, nodes busy.

On a terminal a live panel (``rich``); elsewhere a plain line every ``every`` seconds (logs).
"""

from __future__ import annotations

import sys
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TextIO

ORDER = ("AWAITING_PARENTS", "READY", "RESTART_READY", "RUNNING", "RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT",
         "FINISHED", "FAILED", "KILLED")  # fmt: skip


def line(snap: dict[str, Any]) -> str:
    """One line of a snapshot (``Service._snapshot``)."""
    states = snap["states"]
    counts = " ".join(f"{s}={states[s]}" for s in ORDER if states.get(s))
    r = snap["report"]
    stop = " (draining)" if snap.get("stopping") else ""
    mine = f"this service: {r.finished} finished, {r.failed} failed, {r.created} created{stop}"
    return f"in flight {snap['in_flight']}, nodes {snap['busy_nodes']}/{snap['nodes']} busy; {mine} | {counts or '-'}"


class Plain:
    """A line to ``stream`` at most every ``every`` seconds (and the last one)."""

    def __init__(self, stream: TextIO, every: float = 10.0) -> None:
        self.stream, self.every, self._last = stream, every, 0.0

    def __call__(self, snap: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(f"serve: {line(snap)}", file=self.stream, flush=True)


class Live:
    """A live table on a terminal (rich)."""

    def __init__(self) -> None:
        from rich.live import Live as RichLive

        self.live = RichLive(self._render(None), refresh_per_second=2, transient=False)

    def _render(self, snap: dict[str, Any] | None) -> Any:
        from rich.table import Table

        t = Table(title="balsam-dask serve", show_header=False, min_width=40)
        t.add_column("what")
        t.add_column("count", justify="right")
        if snap is None:
            t.add_row("starting", "")
            return t
        r = snap["report"]
        t.add_row("in flight", str(snap["in_flight"]))
        t.add_row("nodes busy", f"{snap['busy_nodes']}/{snap['nodes']}")
        t.add_row("this service", f"{r.finished} finished, {r.failed} failed, {r.created} created")
        if snap.get("stopping"):
            t.add_row("draining", "yes")
        states = snap["states"]
        for s in ORDER:
            if states.get(s):
                t.add_row(s, str(states[s]))
        return t

    def __call__(self, snap: dict[str, Any]) -> None:
        self.live.update(self._render(snap))

    def __enter__(self) -> Live:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)


def progress_for(mode: str, stream: TextIO = sys.stderr) -> tuple[Any, AbstractContextManager[Any]]:
    """``(callback, context)`` for ``mode``: ``auto`` (live on a terminal, else plain), ``live``,
    ``plain`` or ``none``."""
    if mode == "auto":
        mode = "live" if stream.isatty() else "plain"
    if mode == "live":
        live = Live()
        return live, live
    if mode == "plain":
        return Plain(stream), nullcontext()
    return None, nullcontext()
