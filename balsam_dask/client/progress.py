"""``balsam_dask.progress``: follow tasks by Balsam state until they end, as
``distributed.progress`` follows futures; and the display ``balsam-dask serve`` shares: a live
table on a terminal (rich), elsewhere plain lines (logs)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TextIO

from balsam_dask.errors import InvalidSpec

ORDER = ("CREATED", "AWAITING_PARENTS", "READY", "RESTART_READY", "RUNNING", "RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT",
         "FINISHED", "FAILED", "KILLED")  # fmt: skip
ENDED = ("FINISHED", "FAILED", "KILLED")
#: The store's task filters ``progress`` takes (``Store.tasks``'s).
FILTERS = ("ids", "tags", "name", "state", "key", "kind", "since", "until")
MODES = ("auto", "live", "plain", "none")
#: Seconds a filter matching no task is followed before ``progress`` returns: tasks a client
#: has just submitted reach the store about a second later (the scheduler writes in batches).
EMPTY_WAIT = 10.0
#: A future's status once it has ended -> its task's Balsam state.
FUTURE_ENDED = {"finished": "FINISHED", "error": "FAILED", "cancelled": "KILLED"}


def states_text(states: Mapping[str, int]) -> str:
    """``READY=3 RUNNING=2 ...`` in the states' order (zeros left out)."""
    return " ".join(f"{s}={states[s]}" for s in ORDER if states.get(s)) or "-"


class Plain:
    """A line to ``stream`` at most every ``every`` seconds (only when it changed, if
    ``changes_only``), and the last one when the context closes."""

    def __init__(self, stream: TextIO, line: Callable[[Any], str], every: float = 10.0,
                 changes_only: bool = False) -> None:  # fmt: skip
        self.stream, self.line, self.every, self.changes_only = stream, line, every, changes_only
        self._last, self._text, self._printed = 0.0, "", ""

    def __call__(self, snap: Any) -> None:
        self._text = self.line(snap)
        now = time.monotonic()
        if now - self._last >= self.every and not (self.changes_only and self._text == self._printed):
            self._last = now
            self._print()

    def _print(self) -> None:
        self._printed = self._text
        print(self._text, file=self.stream, flush=True)

    def __enter__(self) -> Plain:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._text and self._text != self._printed:
            self._print()


class Live:
    """A live table on a terminal (rich): ``rows(snap)`` gives its (what, value) rows."""

    def __init__(self, title: str, rows: Callable[[Any], list[tuple[str, Any]]], stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.live import Live as RichLive

        self.title, self.rows = title, rows
        console = Console(file=stream) if stream is not None else None
        self.live = RichLive(self._render(None), refresh_per_second=2, transient=False, console=console)

    def _render(self, snap: Any) -> Any:
        from rich.table import Table

        t = Table(title=self.title, show_header=False, min_width=40)
        t.add_column("what")
        t.add_column("count", justify="right")
        for what, value in self.rows(snap) if snap is not None else [("starting", "")]:
            t.add_row(what, value)
        return t

    def __call__(self, snap: Any) -> None:
        self.live.update(self._render(snap))

    def __enter__(self) -> Live:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)


def display_for(mode: str, stream: TextIO, title: str, line: Callable[[Any], str],
                rows: Callable[[Any], list[tuple[str, Any]]], every: float = 10.0,
                changes_only: bool = False) -> tuple[Any, AbstractContextManager[Any]]:  # fmt: skip
    """``(callback, context)`` for ``mode``: ``auto`` (live on a terminal, else plain), ``live``,
    ``plain`` or ``none`` (no callback)."""
    if mode not in MODES:
        raise InvalidSpec(f"mode={mode!r} is invalid: use one of {', '.join(MODES)}, e.g. mode='plain'")
    if mode == "auto":
        mode = "live" if stream.isatty() else "plain"
    if mode == "live":
        live = Live(title, rows, stream)
        return live, live
    if mode == "plain":
        plain = Plain(stream, line, every, changes_only)
        return plain, plain
    return None, nullcontext()


@dataclass(frozen=True)
class Counts:
    """What ``progress`` saw last: tasks by Balsam state."""

    states: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def finished(self) -> int:
        return self.states.get("FINISHED", 0)

    @property
    def failed(self) -> int:
        return self.states.get("FAILED", 0) + self.states.get("KILLED", 0)

    @property
    def done(self) -> bool:
        """Every task has ended (FINISHED, FAILED or KILLED)."""
        return all(s in ENDED for s, n in self.states.items() if n)


def counts_line(c: Counts) -> str:
    return f"progress: {c.finished}/{c.total} finished, {c.failed} failed or killed | {states_text(c.states)}"


def counts_rows(c: Counts) -> list[tuple[str, Any]]:
    from rich.progress_bar import ProgressBar

    bar = ProgressBar(total=max(c.total, 1), completed=c.finished + c.failed, width=30)
    rows: list[tuple[str, Any]] = [("ended", bar), ("finished / total", f"{c.finished}/{c.total}"),
                                   ("failed or killed", str(c.failed))]  # fmt: skip
    return rows + [(s, str(c.states[s])) for s in ORDER if c.states.get(s)]


def futures_source(futures: list[Any]) -> Callable[[], dict[str, int]]:
    """Counts of the futures' tasks: ended ones from the futures, the others from the
    scheduler plugin (``balsam_states``)."""
    client = futures[0].client

    def counts() -> dict[str, int]:
        out: Counter[str] = Counter()
        pending = []
        for f in futures:
            state = FUTURE_ENDED.get(f.status)
            if state is None:
                pending.append(f.key)
            else:
                out[state] += 1
        if pending:
            got = client.sync(client.scheduler.balsam_states, keys=pending)
            if not isinstance(got, dict):  # Dask answers an unknown request with None
                raise InvalidSpec("the futures' scheduler has no BalsamPlugin: use distributed.progress for them")
            got["CREATED"] = got.get("CREATED", 0) + got.pop("UNKNOWN", 0)  # submitted, not recorded yet
            out.update(got)
        return dict(out)

    return counts


def store_source(filters: dict[str, Any], store: Any) -> tuple[Callable[[], dict[str, int]], Any]:
    """Counts of the store's tasks matching ``filters``; the store to close (None: the caller's)."""
    from balsam_dask.store.api import Store

    if isinstance(store, Store):
        return (lambda: store.summary(**filters)), None
    opened = Store(store, create=False, kind="cli", read_only=True)
    return (lambda: opened.summary(**filters)), opened


def source_of(tasks: Any, store: Any) -> tuple[Callable[[], dict[str, int]], Any]:
    """What ``progress`` follows: futures, or a filter of the store's tasks."""
    from distributed import Future

    if isinstance(tasks, Future):
        return futures_source([tasks]), None
    if isinstance(tasks, Mapping):
        values = list(tasks.values())
        if values and all(isinstance(v, Future) for v in values):
            return futures_source(values), None
        unknown = [k for k in tasks if k not in FILTERS]
        if unknown or not tasks:
            raise InvalidSpec(f"progress filter {dict(tasks)!r} is invalid: give futures, or a mapping of "
                              f"{', '.join(FILTERS)}, e.g. progress({{'tags': {{'exp': 'sweep1'}}}})")  # fmt: skip
        return store_source(dict(tasks), store)
    if isinstance(tasks, Iterable) and not isinstance(tasks, (str, bytes)):
        futures = list(tasks)
        if futures and all(isinstance(f, Future) for f in futures):
            return futures_source(futures), None
    raise InvalidSpec(f"progress({tasks!r:.80}) is invalid: give a future, a list or dict of futures, or a filter "
                      "of the store's tasks such as {'tags': {'exp': 'sweep1'}} or {'name': 'fit-*'}")  # fmt: skip


def progress(tasks: Any, *, store: Any = None, mode: str = "auto", interval: float = 1.0,
             stream: TextIO | None = None, timeout: float | None = None) -> Counts:  # fmt: skip
    """Show the tasks' counts by Balsam state (finished, failed, total) until every one has
    ended, or ``timeout`` seconds; returns the last counts.

    ``tasks``: futures (a future, a list or a dict of them: followed through their scheduler),
    or a filter of the store's tasks (``{'tags': {'exp': 'a'}, 'name': 'fit-*', 'state': [...],
    'ids': [...]}``, as ``balsam-dask ls`` selects; ``store``: a Store or its URL, default the
    CLI's): followed until the tasks it selects have ended (while none match, for up to
    ``EMPTY_WAIT`` seconds). ``mode``: ``auto`` (a live table on a terminal, else a plain line when the counts
    change, at most every ``interval`` seconds), ``live``, ``plain`` or ``none``."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise InvalidSpec(f"interval={interval!r} is invalid: give seconds > 0, e.g. interval=1.0")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise InvalidSpec(f"timeout={timeout!r} is invalid: give seconds >= 0 or None, e.g. timeout=600")
    if mode not in MODES:
        raise InvalidSpec(f"mode={mode!r} is invalid: use one of {', '.join(MODES)}, e.g. mode='plain'")
    source, opened = source_of(tasks, store)
    try:
        counts = Counts(source())  # a bad filter fails here, before anything is shown
        out = stream or sys.stderr
        show, context = display_for(mode, out, "balsam_dask progress", counts_line, counts_rows, interval, True)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        with context:
            while True:
                if show is not None:
                    show(counts)
                now = time.monotonic()
                if counts.done and (counts.total or now - start >= EMPTY_WAIT):
                    return counts
                if deadline is not None and now >= deadline:
                    return counts
                time.sleep(interval)
                counts = Counts(source())
    finally:
        if opened is not None:
            opened.close()
