"""The batching writer in a process of its own.

In the scheduler process the SQL work of recording (row building, validation, the
driver) competes with Dask's event loop for the GIL. :class:`ProcessWriter` keeps the
:class:`~balsam_dask.store.writer.BatchWriter` interface but runs the writer in a child
process: ``put`` still only appends to a deque; a feeder thread ships batches through a
pipe (one ``pickle`` per batch, in C); the child applies them with a BatchWriter of its
own, under the parent's session, with the same retries and replay. When the parent dies,
the pipe closes and the child writes what it received and exits. ``nice`` lowers the
child's CPU priority.

Transitions (four of every five ops a task makes) are not kept as objects: their fields go
flat into one list (``put_transition``, and ``put`` of a Transition). Op objects waiting
for their shipment outlive several collections of the scheduler's garbage collector, are
promoted to its oldest generation and make its full collections come sooner and last
longer; a list of numbers and strings is one object. The feeder ships the waiting
transitions after every other op queued before them, so a task's row always comes first.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import pickle
import threading
from collections import deque
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from balsam_dask.errors import StoreUnavailable
from balsam_dask.store.ops import AllocationWrite, Heartbeat, NewTask, Op, TaskUpdate, Transition
from balsam_dask.store.writer import OpQueue, WriterStats

if TYPE_CHECKING:
    from balsam_dask.store.api import Store

log = logging.getLogger(__name__)
#: Seconds between shipments to the child (sooner when ``max_batch`` ops are queued): the store
#: lags the scheduler by about this much. Fewer, larger transactions cost the writer and the
#: database server ~15-20% less CPU than at 0.2 s, CPU the scheduler and workers share;
#: ``flush()`` ships at once.
MAX_DELAY = 0.5
#: The writer process's nice value (writer_options ``nice``, 0..19). Its work comes in bursts,
#: one per shipment, which may take a core from the scheduler and workers just when they have
#: tasks to move. Niced, it writes more in their idle moments. Measured on 2 cores with no-op
#: tasks (paired runs): +3-4% tasks/s at 10 or 19 in four runs of 3,000 tasks, -6% in one of
#: 10,000, on a machine whose single runs varied by 15%: no steady gain, so the default keeps
#: the scheduler's priority (a niced writer on a host busy for long also lags further).
NICE = 0
#: Ops travel as plain tuples led by their type's index here: pickling named tuples costs
#: three times as much (a Python-level ``__getnewargs__`` per op) in the scheduler's process.
_OP_TYPES: tuple[type, ...] = (Transition, NewTask, TaskUpdate, AllocationWrite, Heartbeat)
_OP_CODE = {t: i for i, t in enumerate(_OP_TYPES)}
#: Fields of one transition in the flat list.
_WIDTH = len(Transition._fields)


def _encode(ops: list[Op]) -> list[tuple[Any, ...]]:
    code = _OP_CODE
    return [(code[type(op)], *op) for op in ops]


def _decode(rows: list[tuple[Any, ...]], flat: list[Any]) -> list[Op]:
    new, types = tuple.__new__, _OP_TYPES
    ops: list[Op] = [new(types[r[0]], r[1:]) for r in rows]
    # _WIDTH fields at a time, in C: zip over one iterator repeated _WIDTH times
    ops += map(partial(new, Transition), zip(*[iter(flat)] * _WIDTH, strict=True))
    return ops


def _child(url: str, session_id: int, conn: Any, options: dict[str, Any], key_file: str) -> None:
    from balsam_dask.store.api import Store

    nice = options.pop("nice", 0)
    if nice:
        os.nice(nice)
    store = Store(url, kind="writer", key_file=key_file)  # the parent's key: it signs what it writes
    store.bind_session(session_id)
    close_timeout = options.pop("close_timeout", 60.0)
    writer = store.writer(**options)
    try:
        while True:
            try:
                kind, data = pickle.loads(conn.recv_bytes())
            except EOFError:  # the parent is gone: write what we have and leave
                break
            if kind == "ops":
                writer.put_many(_decode(*data))
            elif kind == "flush":
                ok = writer.flush(data)
                conn.send_bytes(pickle.dumps(("flushed", (ok, writer.stats))))
            elif kind == "close":
                break
    finally:
        error = None
        try:
            writer.close(timeout=close_timeout)
        except Exception as e:  # reported to the parent
            error = str(e)
        try:
            conn.send_bytes(pickle.dumps(("closed", (error, writer.stats))))
        except (OSError, EOFError):
            pass
        store.engine.dispose()


class ProcessWriter(OpQueue):
    def __init__(self, store: Store, *, max_batch: int = 5000, max_delay: float = MAX_DELAY, nice: int = NICE,
                 **options: Any) -> None:  # fmt: skip
        self.session_id = store.session_id
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.stats = WriterStats()
        self._q: deque[Op] = deque()
        self._flat: list[Any] = []  # transitions' fields, _WIDTH per transition, in put order
        self._lock = threading.Lock()  # one sender on the pipe at a time
        self._wake = threading.Event()
        self._closing = False
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        url = store.url.render_as_string(hide_password=False)
        # the parent already batched by time: the child writes what arrives almost at once, in
        # transactions as large as a shipment (up to 4 x max_batch rows and the transitions shipped
        # with them): a task created and moved within one then goes in once, in its state after them
        # (store/apply.py), not inserted and updated
        opts = {"max_batch": 8 * max_batch, "max_delay": min(max_delay, 0.02), "nice": nice, **options}
        self._proc = ctx.Process(target=_child, args=(url, self.session_id, child_conn, opts, store.key_file),
                                 name="balsam-dask-writer", daemon=True)  # fmt: skip
        self._proc.start()
        child_conn.close()
        self._thread = threading.Thread(target=self._feed, name="balsam-dask-feeder", daemon=True)
        self._thread.start()
        atexit.register(self._atexit)

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    # --- producer side (any thread; never blocks) ---
    def put(self, op: Op) -> None:
        if type(op) is Transition:
            self.put_transition(*op)
        else:
            OpQueue.put(self, op)

    def put_many(self, ops: Iterable[Op]) -> None:
        for op in ops:
            self.put(op)

    def put_transition(self, *fields: Any) -> None:
        flat = self._flat
        flat.extend(fields)  # one C call: atomic under the GIL, like deque.append
        if len(flat) >= self.max_batch * _WIDTH and not self._wake.is_set() and not self._held:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._q) + len(self._flat) // _WIDTH

    # --- feeder ---
    def _take(self, limit: int) -> list[Op]:
        q = self._q
        batch: list[Op] = []
        while q and len(batch) < limit:
            op = q.popleft()
            if type(op) is NewTask and callable(op.payload):
                op = op._replace(payload=op.payload())  # serialize durable payloads here, not in the loop
            batch.append(op)
        return batch

    def _send(self, kind: str, data: Any) -> None:
        self._conn.send_bytes(pickle.dumps((kind, data), protocol=pickle.HIGHEST_PROTOCOL))

    def _feed(self) -> None:
        while not self._closing:
            self._wake.wait(self.max_delay)
            self._wake.clear()
            if not self._held:
                self._ship()

    def _ship(self) -> None:
        with self._lock:
            while self._q or self._flat:
                # the transitions waiting now, then every other op queued so far (among them
                # the rows of those transitions' tasks), shipped before the transitions
                flat = self._flat
                n = len(flat)
                trans = flat[:n]
                del flat[:n]  # what is put meanwhile goes after n: kept for the next round
                left = len(self._q)  # > 0, or trans is not empty: each message carries something
                while True:  # the last message carries the transitions: one transaction, usually
                    batch = self._take(min(left, self.max_batch * 4))
                    left -= len(batch)
                    last = left <= 0
                    if not self._send_ops(_encode(batch), trans if last else []):
                        self._q.extendleft(reversed(batch))
                        flat[0:0] = trans
                        return
                    if last:
                        break

    def _send_ops(self, rows: list[tuple[Any, ...]], flat: list[Any]) -> bool:
        try:
            self._send("ops", (rows, flat))
        except (OSError, EOFError):
            self.stats.last_error = "the writer process is gone"
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued before this call is written; False on timeout."""
        self._ship()
        with self._lock:
            try:
                self._send("flush", timeout)
                if not self._conn.poll(None if timeout is None else timeout + 5):
                    return False
                _, (ok, stats) = pickle.loads(self._conn.recv_bytes())
            except (OSError, EOFError):
                return False
        self.stats = stats  # the child's: what was written, retried, rejected
        return bool(ok)

    def close(self, timeout: float | None = 60.0) -> None:
        if self._closing:
            return
        self._ship()
        self._closing = True
        self._wake.set()
        self._thread.join(5)
        atexit.unregister(self._atexit)
        error = None
        with self._lock:
            try:
                self._send("close", None)
                if self._conn.poll(None if timeout is None else timeout + 10):
                    _, (error, stats) = pickle.loads(self._conn.recv_bytes())
                    self.stats = stats
                else:
                    error = f"the writer process did not finish within {timeout}s"
            except (OSError, EOFError):
                error = "the writer process is gone"
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        if error or self._q or self._flat:
            raise StoreUnavailable(f"the store writer could not write everything before closing: {error}")

    def _atexit(self) -> None:
        try:
            self.close(timeout=10.0)
        except Exception as e:  # pragma: no cover - interpreter shutdown
            log.error("%s", e)
