"""The batching writer in a process of its own.
(Design notes: docs/ARCHITECTURE.md, store/procwriter.py.)
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from balsam_dask.errors import StoreUnavailable
from balsam_dask.store.ops import AllocationWrite, Heartbeat, NewTask, Op, Settle, TaskUpdate, Transition
from balsam_dask.store.writer import Applier, OpQueue, WriterStats

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
_OP_TYPES: tuple[type, ...] = (Transition, NewTask, TaskUpdate, AllocationWrite, Heartbeat, Settle)
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


#: Seconds between heartbeats of the scheduler's session (written by the child, like any op).
HEARTBEAT = 10.0
#: The command that runs a writer process; the socket's descriptor follows as its argument.
_COMMAND = "from balsam_dask.store.procwriter import child_main; child_main()"


def child_main() -> None:
    """A writer process: its configuration, then numbered shipments, arrive on the socket
    whose descriptor is ``sys.argv[1]``; each is written in one transaction and acknowledged
    with the counts of that write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when recording ends
    conn = Connection(int(sys.argv[1]))
    config = pickle.loads(conn.recv_bytes())
    if config["nice"]:
        os.nice(config["nice"])
    from balsam_dask.store.api import Store

    store = Store(config["url"], kind="writer", key_file=config["key_file"])  # the parent's key signs
    store.bind_session(config["session_id"])
    applier = Applier(store, config["backoff_initial"], config["backoff_max"])
    try:
        while True:
            try:
                kind, data = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):  # the parent is gone
                break
            if kind == "close":
                break
            seq, replay, rows, flat = data
            applier.write(_decode(rows, flat), replay=replay)
            conn.send_bytes(pickle.dumps(("ack", (seq, applier.stats)), protocol=pickle.HIGHEST_PROTOCOL))
            applier.stats = WriterStats()
    finally:
        store.engine.dispose()
        conn.close()


class ProcessWriter(OpQueue):
    def __init__(self, store: Store, *, max_batch: int = 5000, max_delay: float = MAX_DELAY, nice: int = NICE,
                 heartbeat: float = HEARTBEAT, backoff_initial: float = 0.05, backoff_max: float = 5.0,
                 close_timeout: float = 60.0) -> None:  # fmt: skip
        self.session_id = store.session_id
        self._store = store  # writes what close finds queued when no writer process ever started
        self._backoff = (backoff_initial, backoff_max)
        self._unconfirmed = 0  # ops of that write, until it succeeds
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.heartbeat = heartbeat
        self.close_timeout = close_timeout
        self.stats = WriterStats()
        self._config = {"url": store.url.render_as_string(hide_password=False), "key_file": store.key_file,
                        "session_id": self.session_id, "nice": nice, "backoff_initial": backoff_initial,
                        "backoff_max": backoff_max}  # fmt: skip
        self._q: deque[Op] = deque()
        self._flat: list[Any] = []  # transitions' fields, _WIDTH per transition, in put order
        self._lock = threading.RLock()  # one sender at a time; guards the child and what is in flight
        self._acked = threading.Condition(threading.Lock())
        self._in_flight: deque[tuple[int, list[tuple[Any, ...]], list[Any], int]] = deque()  # seq, rows, flat, ops
        self._seq = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._dead = False  # the child is gone: the feeder starts another
        self._wake = threading.Event()
        self._closing = False
        self._closed = False
        self._next_beat = time.monotonic() + heartbeat
        self._thread = threading.Thread(target=self._feed, name="balsam-dask-feeder", daemon=True)
        self._thread.start()
        atexit.register(self._atexit)

    @property
    def alive(self) -> bool:
        """A writer process runs (or none is needed yet: nothing was shipped)."""
        return not self._closed and (self._proc is None or self._proc.poll() is None)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

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
        """Ops queued and not yet shipped."""
        return len(self._q) + len(self._flat) // _WIDTH

    @property
    def in_flight(self) -> int:
        """Ops shipped to the writer process and not yet acknowledged as written."""
        return sum(n for *_, n in list(self._in_flight))

    # --- the writer process ---
    def _spawn(self) -> None:
        parent, child = socket.socketpair()
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", _COMMAND, str(child.fileno())],
                                          pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                          start_new_session=True)  # fmt: skip
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self._dead = False
        self._send(self._config)
        threading.Thread(target=self._read_acks, args=(self._conn,), name="balsam-dask-acks", daemon=True).start()

    def _restart(self) -> None:
        """Replace a dead writer process and send it every shipment in flight again."""
        proc = self._proc
        assert proc is not None
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        if self._conn is not None:
            self._conn.close()
        self.stats.restarts += 1
        n = self.in_flight
        self.stats.last_error = (f"the writer process (pid {proc.pid}) died (exit code {code}); "
                                 f"restarted, replaying {n} operations it had not confirmed")  # fmt: skip
        log.error("balsam_dask: %s", self.stats.last_error)
        time.sleep(min(0.1 * 2 ** min(self.stats.restarts, 8), 10.0))  # a child that keeps dying is not spun
        self._spawn()
        for seq, rows, flat, _ in list(self._in_flight):
            self._send(("ops", (seq, True, rows, flat)))

    def _read_acks(self, conn: Connection) -> None:
        while True:
            try:
                _, (seq, stats) = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                break
            with self._acked:
                while self._in_flight and self._in_flight[0][0] <= seq:
                    self._in_flight.popleft()
                self.stats.add(stats)
                self._acked.notify_all()
        if conn is self._conn and not self._closed:  # not a replaced child's socket, not a normal close
            with self._acked:
                self._dead = True
                self._acked.notify_all()
            self._wake.set()

    def _send(self, message: Any) -> None:
        assert self._conn is not None
        try:
            self._conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # the child died: the reader notices, the feeder restarts it and resends
            self._dead = True

    # --- feeder ---
    def _feed(self) -> None:
        while not self._closing:
            self._wake.wait(self.max_delay)
            self._wake.clear()
            if self._closing:
                break
            with self._lock:
                if self._dead:
                    self._restart()
                now = time.monotonic()
                if now >= self._next_beat:
                    self._next_beat = now + self.heartbeat
                    OpQueue.put(self, Heartbeat(self.session_id, time.time()))
                if not self._held:
                    self._ship()

    def _take(self, limit: int) -> list[Op]:
        q = self._q
        batch: list[Op] = []
        while q and len(batch) < limit:
            op = q.popleft()
            if type(op) is NewTask and callable(op.payload):
                op = op._replace(payload=op.payload())  # serialize durable payloads here, not in the loop
            batch.append(op)
        return batch

    def _ship(self) -> None:
        with self._lock:
            while self._q or self._flat:
                if self._proc is None:
                    self._spawn()
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
                    self._seq += 1
                    shipped = (self._seq, _encode(batch), trans if last else [])
                    self._in_flight.append((*shipped, len(batch) + (len(trans) // _WIDTH if last else 0)))
                    self._send(("ops", (shipped[0], False, shipped[1], shipped[2])))
                    if last:
                        break

    def _wait_written(self, seq: int, deadline: float | None) -> bool:
        """Wait until shipment ``seq`` is acknowledged, restarting a dead child meanwhile."""
        while True:
            with self._acked:
                if not self._in_flight or self._in_flight[0][0] > seq:
                    return True
                if not self._dead:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._acked.wait(1.0 if left is None else min(left, 1.0))
                    continue
            with self._lock:
                if self._dead:
                    self._restart()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued before this call is written; False on timeout."""
        with self._lock:
            self._ship()
            seq = self._seq
        return self._wait_written(seq, None if timeout is None else time.monotonic() + timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop the writer process. Raises StoreUnavailable,
        with the number of operations not written, if that took longer than ``timeout``
        seconds (default: the ``close_timeout`` option)."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        self._thread.join(30)
        atexit.unregister(self._atexit)
        timeout = self.close_timeout if timeout is None else timeout
        with self._lock:
            here = self._proc is None  # nothing shipped yet: no process to start just to close it
        ok = self._write_here(time.monotonic() + timeout) if here else self.flush(timeout)
        with self._lock:
            self._closed = True
            if self._proc is not None:
                self._send(("close", None))
                try:
                    self._proc.wait(10 if ok else 0.5)  # a child still retrying a write is stopped
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                assert self._conn is not None
                self._conn.close()
        left = self.in_flight + self.pending + self._unconfirmed
        if not ok or left:
            who = "the store" if here else "the writer process"
            why = self.stats.last_error if ok else (f"{who} confirmed nothing for {timeout}s: "
                                                    "the database may be unreachable or locked")  # fmt: skip
            raise StoreUnavailable(f"the store writer could not write {left} operations before closing ({why})")

    def _write_here(self, deadline: float) -> bool:
        """Write what is queued from this process, as the writer process would have (a
        scheduler closed within its first shipment's delay: starting a Python process to
        write a few ops took half a second). In a thread: a write waiting on a lock (SQLite's
        busy timeout) does not hold close past ``deadline``."""
        with self._lock:
            flat = self._flat[:]
            del self._flat[: len(flat)]
            batch = self._take(len(self._q)) + _decode([], flat)  # rows before their transitions
            self._unconfirmed = len(batch)
        if not batch:
            return True

        def write() -> None:
            applier = Applier(self._store, *self._backoff)
            if applier.write(batch, give_up_at=deadline):
                self._unconfirmed = 0
            self.stats.add(applier.stats)

        thread = threading.Thread(target=write, name="balsam-dask-close-writer", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    def _atexit(self) -> None:
        try:
            self.close(timeout=10.0)
        except Exception as e:  # pragma: no cover - interpreter shutdown
            log.error("%s", e)
