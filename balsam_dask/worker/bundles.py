"""The node-local executor of bundled tasks: it takes the bundles the scheduler plugin sends
this node (``BUNDLE_OP``), starts each task when its cores are free, in the order received
(exactly as the placer mirrors it), runs it through the attempt machinery of every balsam task
(retries, timeouts, kill, work directories, output files), and sends back each task's start,
failed attempts and end with its result in batches (``BUNDLE_REPORTS_OP``).

Cores are the worker's ``BALSAM_CORES`` resource, shared with the balsam tasks Dask runs here,
so both kinds together never use more cores than the node has. State is touched on the
worker's event loop only; the tasks run in a thread pool of one thread per core.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from balsam_dask.errors import TaskKilled
from balsam_dask.payload import dump_value
from balsam_dask.protocol import (
    BUNDLE_OP,
    BUNDLE_REPORTS_OP,
    BUNDLE_UNQUEUE_OP,
    CORES_RESOURCE,
    BundledTask,
    BundleReport,
    task_spec,
)
from balsam_dask.taskdb.job import DbJob
from balsam_dask.worker.context import AttemptSite, set_site
from balsam_dask.worker.execute import ERROR_TAIL, own_error_tail
from balsam_dask.worker.runtime import NodeRuntime
from balsam_dask.worker.seceded import start_waiting

log = logging.getLogger(__name__)

#: Unpickled functions kept per node (a map's function is sent with each bundle, loaded once).
FUNCTION_CACHE = 64
#: While tasks wait in its queue, the node holds reports this long to send more per message
#: (an idle node sends at once: the round trip of a lone task pays nothing). Each message costs
#: the node's event loop ~0.5 ms (sizing, encoding, the write, the GIL taken back from the
#: running tasks' thread): held 2 ms, that was ~0.27 ms per 1.5 ms app; held 10 ms, ~0.1 ms;
#: held 25 ms, the scheduler's CPU per bundled app fell 140 -> 102 us (fewer messages to handle).
#: The prefetch queue holds ~50 ms of work, refilled at half (scheduler/bundles.py): refills
#: still come in time.
REPORT_DELAY = 0.025
#: Reports that leave at once, without waiting for REPORT_DELAY: tasks of a few microseconds
#: would otherwise end faster than the refills of a queue of MAX_DEPTH come.
REPORT_MAX = 256


class BundleExecutor:
    """Runs the bundled tasks of one node-worker."""

    def __init__(self, worker: Any, runtime: NodeRuntime) -> None:
        self.worker = worker
        self.runtime = runtime
        self.queue: deque[BundledTask] = deque()
        self.running: dict[str, int] = {}  # key -> cores it holds
        self.killed: dict[str, str] = {}  # running key -> why it was killed
        self.fn_bytes: dict[str, bytes] = {}  # function id -> pickled (of queued or running tasks)
        self.fns: OrderedDict[str, Any] = OrderedDict()  # function id -> (callable, *leading arguments)
        self.own_cores = runtime.config.cores  # used when the worker has no BALSAM_CORES resource
        self.pool = ThreadPoolExecutor(max_workers=max(1, runtime.config.cores), thread_name_prefix="balsam-bundle")
        self._reports: list[BundleReport] = []
        self._lock = threading.Lock()  # the queue, running, killed and functions: loop and pool threads
        self._flushing = False

    def install(self) -> None:
        self.worker.stream_handlers[BUNDLE_OP] = self.on_bundle
        self.worker.stream_handlers[BUNDLE_UNQUEUE_OP] = self.on_unqueue

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ messages (event loop)
    def on_bundle(self, tasks: list[BundledTask], fns: dict[str, bytes] | None = None, **_: Any) -> None:
        with self._lock:
            if fns:
                self.fn_bytes.update(fns)
            self.queue.extend(tasks)
        self._start()

    def on_unqueue(self, keys: list[str], **_: Any) -> None:
        """Give back the queued tasks among ``keys`` that have not started."""
        wanted = set(keys)
        with self._lock:
            kept = [t for t in self.queue if t["key"] not in wanted]
            back = len(self.queue) - len(kept)
            if back:
                self.queue = deque(kept)
            running = set(self.running)
        now = time.time()
        for key in wanted:
            self._report({"op": "kept" if key in running else "unqueued", "key": key, "ts": now})
        if back:
            self._start()

    def kill(self, keys: Iterable[str], reason: str) -> None:
        """Drop queued tasks among ``keys`` (each reported killed); running ones are stopped by
        the runtime (their processes) and reported killed when they return."""
        wanted = set(keys)
        now = time.time()
        with self._lock:
            for key in wanted & self.running.keys():
                self.killed[key] = reason
            dropped = [t["key"] for t in self.queue if t["key"] in wanted]
            if dropped:
                self.queue = deque(t for t in self.queue if t["key"] not in wanted)
        for key in dropped:
            self._report({"op": "end", "key": key, "ts": now, "status": "killed", "text": reason})

    # ------------------------------------------------------------------ starting (event loop)
    def _free_cores(self) -> int:
        avail = self.worker.state.available_resources
        return int(avail[CORES_RESOURCE]) if CORES_RESOURCE in avail else self.own_cores

    def _take_cores(self, n: int) -> None:
        avail = self.worker.state.available_resources
        if CORES_RESOURCE in avail:
            avail[CORES_RESOURCE] -= n
        else:
            self.own_cores -= n

    def _start(self) -> None:
        """Start queued tasks in order while the head's cores are free."""
        free = self._free_cores()
        started = []
        with self._lock:
            q = self.queue
            while q:
                cores = task_spec(q[0]["spec"]).resources.cores
                if cores > free:
                    break
                task = q.popleft()
                free -= cores
                self.running[task["key"]] = cores
                started.append((task, cores))
        for task, cores in started:
            self._take_cores(cores)
            self.pool.submit(self._run, task)

    def _give_back(self, cores: int) -> None:
        """Cores a pool thread freed (it found no queued task to hand them to)."""
        avail = self.worker.state.available_resources
        if CORES_RESOURCE in avail:
            avail[CORES_RESOURCE] += cores
            start_waiting(self.worker)  # a Dask-run balsam task may be waiting for these cores
        else:
            self.own_cores += cores
        with self._lock:
            if not self.queue and not self.running:
                self.fn_bytes.clear()
        self._start()

    def _next(self, key: str) -> BundledTask | None:
        """After ``key`` ended in a pool thread: the queue's head if it fits the cores ``key``
        held (it starts in this thread at once, no trip through the event loop); the cores
        left over go back on the loop."""
        with self._lock:
            cores = self.running.pop(key, 0)
            self.killed.pop(key, None)
            nxt = None
            if self.queue:
                need = task_spec(self.queue[0]["spec"]).resources.cores
                if need <= cores:
                    nxt = self.queue.popleft()
                    self.running[nxt["key"]] = need
                    cores -= need
        if cores:
            self.worker.loop.add_callback(self._give_back, cores)
        return nxt

    # ------------------------------------------------------------------ running (pool threads)
    def _run(self, first: BundledTask) -> None:
        """Run ``first``, then queued tasks that fit its cores, one after the other."""
        task: BundledTask | None = first
        while task is not None:
            self._run_one(task)
            task = self._next(task["key"])

    def _run_one(self, task: BundledTask) -> None:
        key = task["key"]
        done: dict[str, Any] = {}
        report: BundleReport
        site = AttemptSite(key, task_spec(task["spec"]), dict(task["dispatch"]), self._report, done.update)
        self._report({"op": "start", "key": key, "ts": time.time(), "attempt": site.dispatch.get("attempt", 1)})
        set_site(site)
        try:
            value = self._call(task)
        except TaskKilled as e:
            report = {"op": "end", "key": key, "ts": time.time(), "status": "killed", "text": str(e)}
        except BaseException as e:  # the task's own error, for its owner and the record
            report = {"op": "end", "key": key, "ts": time.time(), "status": "error", "error": _pickled_error(e),
                      "text": f"{type(e).__name__}: {e}"[-ERROR_TAIL:], "traceback": own_error_tail(e)}  # fmt: skip
        else:
            data = None if "job" in task else done.pop("result", None)  # a durable result: pickled and sent once
            report = {"op": "end", "key": key, "ts": time.time(), "status": "ok",
                      "value": data if data is not None else dump_value(value), "done": done}  # fmt: skip
            if data is not None:
                report["stored"] = True
        finally:
            set_site(None)
        with self._lock:
            reason = self.killed.get(key)
        if reason is not None and report["status"] != "ok":
            report = {"op": "end", "key": key, "ts": report["ts"], "status": "killed", "text": reason}
        self._report(report)

    def _call(self, task: BundledTask) -> Any:
        job = task.get("job")
        if job is not None:
            from balsam_dask.worker.dbtask import run_db_task

            return run_db_task(DbJob.from_dict(job))
        fn_id = task["fn"]
        with self._lock:
            entry = self.fns.get(fn_id)
            data = self.fn_bytes.get(fn_id) if entry is None else None
        if entry is None:
            if data is None:
                raise RuntimeError(f"bundled task {task['key']}: its function {fn_id} did not reach this node")
            entry = cloudpickle.loads(data)
            with self._lock:
                self.fns[fn_id] = entry
                if len(self.fns) > FUNCTION_CACHE:
                    self.fns.popitem(last=False)
        target, *lead = entry  # e.g. (run_python, task_fn, handlers) or (run_app,)
        args, kwargs = cloudpickle.loads(task["args"])
        return target(*lead, *args, **kwargs)

    # ------------------------------------------------------------------ reports
    def _report(self, msg: Any) -> None:
        """Queue a report (any thread); they leave in one message per turn of the event loop,
        REPORT_DELAY later while tasks wait here, or at once when REPORT_MAX are waiting."""
        with self._lock:
            self._reports.append(msg)
            full = len(self._reports) == REPORT_MAX
            if self._flushing and not full:
                return
            self._flushing = True
        if self.queue and not full:
            self.worker.loop.add_callback(self.worker.loop.call_later, REPORT_DELAY, self._flush)
        else:
            self.worker.loop.add_callback(self._flush)

    def _flush(self) -> None:
        with self._lock:
            reports, self._reports = self._reports, []
            self._flushing = False
        if reports:
            self.worker.batched_stream.send({"op": BUNDLE_REPORTS_OP, "reports": reports})


def _pickled_error(e: BaseException) -> bytes:
    try:
        return bytes(cloudpickle.dumps(e))
    except Exception:  # an exception that does not pickle travels as its text
        text = "".join(traceback.format_exception_only(type(e), e)).strip()
        return bytes(cloudpickle.dumps(RuntimeError(text)))
