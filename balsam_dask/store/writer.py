"""The batching writer: the only path from the Dask event loop to the database.

``put`` appends to a deque and returns (no lock, no I/O): it never blocks the caller's
event loop. A thread flushes batches in one transaction each, when ``max_batch`` ops are
queued or every ``max_delay`` seconds. If the database is unavailable it keeps the
batch, backs off and retries; a batch whose commit is uncertain is replayed with
``replay=True`` so nothing is written twice (ids are made by the session). A batch that
the store rejects (an illegal transition: a bug upstream) is split until the bad ops
are isolated; they are kept in ``rejected`` and logged, the rest is written.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from balsam_dask.errors import BalsamDaskError, InvalidSpec, StoreUnavailable
from balsam_dask.store.engine import is_transient
from balsam_dask.store.ops import Heartbeat, Op, Transition


class Store(Protocol):
    """What a writer needs of ``balsam_dask.Store``: its session and ``apply``."""

    @property
    def session_id(self) -> int: ...

    def apply(self, ops: Sequence[Op], *, replay: bool = False) -> Any: ...


log = logging.getLogger(__name__)


#: Highest nice value (lowest CPU priority) on Linux.
MAX_NICE = 19
#: Options a writer takes (``BalsamPlugin(writer_options=...)``) and how each is checked: the
#: type, an example, the accepted range (low, high; None: no bound) and whether low is allowed.
_OPTIONS: dict[str, tuple[type, str, float, float | None, bool]] = {
    "max_batch": (int, "max_batch=5000", 0, None, False),
    "max_delay": (float, "max_delay=0.5", 0, None, False),
    "heartbeat": (float, "heartbeat=10.0", 0, None, False),
    "backoff_initial": (float, "backoff_initial=0.05", 0, None, False),
    "backoff_max": (float, "backoff_max=5.0", 0, None, False),
    "nice": (int, "nice=10", 0, MAX_NICE, True),  # the writer process's CPU priority (store/procwriter.py)
    "close_timeout": (float, "close_timeout=60.0", 0, None, False),  # how long close waits for the store
}


def check_writer_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` if every name is a writer option and every value a number in its range
    (positive; ``nice``: 0 to 19)."""
    if not isinstance(options, dict):
        raise InvalidSpec(f"writer_options={options!r} is invalid: give a dict such as {{'max_delay': 0.5}}")
    for name, value in options.items():
        if name not in _OPTIONS:
            raise InvalidSpec(
                f"unknown writer option {name!r}; options are: {', '.join(_OPTIONS)} (e.g. {{'max_batch': 5000}})"
            )
        kind, example, low, high, low_ok = _OPTIONS[name]
        good = isinstance(value, (int, float)) and not isinstance(value, bool)
        good = good and (kind is not int or isinstance(value, int))
        good = good and (value >= low if low_ok else value > low) and (high is None or value <= high)
        if not good:
            what = "an integer" if kind is int else "a number of seconds"
            span = f"> {low}" if high is None else f"{low}..{high}"
            raise InvalidSpec(f"writer option {name}={value!r} is invalid: give {what} {span}, e.g. {example}")
    return dict(options)


class _Marker:
    """Queued by ``flush``: set once everything queued before it is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


@dataclass
class WriterStats:
    written: int = 0
    batches: int = 0
    retries: int = 0
    replays: int = 0
    skipped_on_replay: int = 0
    last_error: str | None = None
    rejected: list[tuple[Op, str]] = field(default_factory=list)
    restarts: int = 0  # writer processes that died and were replaced (store/procwriter.py)

    def add(self, other: WriterStats) -> None:
        """Fold in the counts of another writer (a writer process's, per acknowledged shipment)."""
        self.written += other.written
        self.batches += other.batches
        self.retries += other.retries
        self.replays += other.replays
        self.skipped_on_replay += other.skipped_on_replay
        self.rejected += other.rejected
        self.last_error = other.last_error or self.last_error


class OpQueue:
    """The producer side of a writer (any thread; never blocks): ops go to a deque and the
    writer is woken once a batch is full."""

    max_batch: int
    _q: deque[Any]
    _wake: threading.Event
    _held = False

    def hold(self) -> None:
        """Write nothing until :meth:`release` (``flush`` and ``close`` still write). The
        scheduler plugin holds the writer while Dask turns a new graph's tasks into states, so
        a task's row and its first transitions reach the same transaction: the row goes in in
        its state after them instead of being inserted and then updated (a 10,000-task map
        otherwise ships its rows once 5,000 are queued, before their transitions)."""
        self._held = True

    def release(self) -> None:
        self._held = False
        if self.pending >= self.max_batch:
            self._wake.set()

    def put(self, op: Op) -> None:
        self._q.append(op)
        if len(self._q) >= self.max_batch and not self._wake.is_set() and not self._held:
            self._wake.set()

    def put_many(self, ops: Iterable[Op]) -> None:
        self._q.extend(ops)
        if len(self._q) >= self.max_batch and not self._held:
            self._wake.set()

    def put_transition(self, *fields: Any) -> None:
        """``put(Transition(*fields))``; writers that can keep the fields without an object
        per op (:class:`~balsam_dask.store.procwriter.ProcessWriter`) do."""
        self.put(Transition(*fields))

    @property
    def pending(self) -> int:
        return len(self._q)

    @property
    def in_flight(self) -> int:
        """Ops handed to a writer process and not yet confirmed (none for the thread writer)."""
        return 0

    @property
    def pid(self) -> int | None:
        """The writer process (None: none, or not started yet)."""
        return None


class BatchWriter(OpQueue):
    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 5000,
        max_delay: float = 0.2,
        heartbeat: float = 10.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        name: str = "balsam-dask-writer",
    ) -> None:
        self.store = store
        self.session_id = store.session_id
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.heartbeat = heartbeat
        self.applier = Applier(store, backoff_initial, backoff_max)
        self.stats = self.applier.stats
        self._q: deque[Op | _Marker] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._flushes = 0  # markers queued and not yet reached: write without waiting
        self._flush_lock = threading.Lock()
        self._give_up_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        atexit.register(self._atexit)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued before this call is written; False on timeout."""
        if not self._thread.is_alive():
            return not self._q
        marker = _Marker()
        with self._flush_lock:
            self._flushes += 1
        self._q.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Write everything queued, then stop. Raises StoreUnavailable if the database
        stayed unreachable for ``timeout`` seconds (the unwritten ops are counted)."""
        if self._closing:
            self._thread.join(timeout)
            return
        self._give_up_at = None if timeout is None else time.monotonic() + timeout
        self._closing = True
        self._wake.set()
        self._thread.join(None if timeout is None else timeout + 5)
        atexit.unregister(self._atexit)
        left = sum(1 for op in self._q if not isinstance(op, _Marker))
        if left:
            raise StoreUnavailable(
                f"the store writer could not write {left} operations before closing "
                f"(last error: {self.stats.last_error})"
            )

    def _atexit(self) -> None:
        try:
            self.close(timeout=10.0)
        except BalsamDaskError as e:  # pragma: no cover - interpreter shutdown
            log.error("%s", e)

    # --- writer thread ---
    def _run(self) -> None:
        next_beat = time.monotonic() + self.heartbeat
        while True:
            if not self._q and not self._closing:
                self._wake.wait(self.max_delay)
            self._wake.clear()
            if not (self._closing or self._flushes) and 0 < len(self._q) < self.max_batch:
                # let a partial batch fill up for up to max_delay
                self._wake.wait(self.max_delay)
                self._wake.clear()
            if self._held and not (self._closing or self._flushes):
                self._wake.wait(self.max_delay)  # or until release() finds a full batch
                continue
            batch: list[Op] = []
            markers: list[_Marker] = []
            q = self._q
            while q and len(batch) < self.max_batch:
                item = q.popleft()
                if isinstance(item, _Marker):
                    markers.append(item)
                    break
                batch.append(item)
            now = time.monotonic()
            if now >= next_beat:
                batch.append(Heartbeat(self.session_id, time.time()))
                next_beat = now + self.heartbeat
            if batch and not self.applier.write(batch, give_up_at=self._give_up_at):
                # gave up while closing: put the batch back so close() can count it
                q.extendleft(reversed(batch))
                return
            for m in markers:
                with self._flush_lock:
                    self._flushes -= 1
                m.done.set()
            if self._closing and not q:
                return


class Applier:
    """Writes batches through a store: retries transient failures with exponential backoff,
    replays (``replay=True``) a batch whose commit became uncertain, and splits a rejected batch
    until the offending ops are isolated in ``stats.rejected``; the rest is written."""

    def __init__(self, store: Store, backoff_initial: float = 0.05, backoff_max: float = 5.0) -> None:
        self.store = store
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stats = WriterStats()

    def write(self, batch: list[Op], *, replay: bool = False, give_up_at: float | None = None) -> bool:
        """Write one batch; False if the store stayed unavailable past ``give_up_at``."""
        delay = self.backoff_initial
        while True:
            try:
                stats = self.store.apply(batch, replay=replay)
            except Exception as e:
                if is_transient(e):
                    self.stats.retries += 1
                    self.stats.last_error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                    log.warning("store write failed (%s); retrying in %.2fs", self.stats.last_error, delay)
                    replay = True
                    if give_up_at is not None and time.monotonic() > give_up_at:
                        return False
                    time.sleep(delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                self._isolate(batch, replay, e)
                return True
            self.stats.batches += 1
            self.stats.written += stats.tasks + stats.events + stats.updates
            if replay:
                self.stats.replays += 1
                self.stats.skipped_on_replay += stats.skipped
            return True

    def _isolate(self, batch: list[Op], replay: bool, error: Exception) -> None:
        if len(batch) == 1:
            self.stats.rejected.append((batch[0], f"{type(error).__name__}: {error}"))
            log.error("store rejected %r: %s", batch[0], error)
            return
        mid = len(batch) // 2
        for part in (batch[:mid], batch[mid:]):
            try:
                stats = self.store.apply(part, replay=replay)
            except Exception as e:
                if is_transient(e):
                    self.write(part, replay=replay)
                else:
                    self._isolate(part, replay, e)
            else:
                self.stats.written += stats.tasks + stats.events + stats.updates
