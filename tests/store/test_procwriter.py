"""The writer in a process of its own: same guarantees as the in-process writer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial

from balsam_dask.spec import TaskSpec
from balsam_dask.store import NewTask, Store, Transition
from balsam_dask.store.procwriter import ProcessWriter
from tests.store.test_writer import _lifecycle_ops


def test_put_flush_close(store: Store) -> None:
    w = ProcessWriter(store, max_batch=200, max_delay=0.05)
    w.put_many(_lifecycle_ops(store, 300, "p"))  # type: ignore[arg-type]
    assert w.flush(timeout=60)
    assert store.count(state="FINISHED") == 300
    assert w.stats.written == 300 * 5 and w.stats.rejected == []
    # durable payloads given as callables are serialized by the feeder, not the caller
    t = NewTask(store.new_id(), "lazy", TaskSpec(), payload=partial(bytes, b"payload"))
    w.put(t)
    w.close()
    assert store.payload(t.id) == b"payload"
    assert not w.alive


def test_illegal_ops_are_isolated(store: Store) -> None:
    (tid,) = store.create_tasks([TaskSpec(name="x")])
    w = ProcessWriter(store, max_batch=10, max_delay=0.05)
    good = Transition(store.new_id(), tid, "CREATED", "READY", time.time())
    bad = Transition(store.new_id(), tid, "READY", "FINISHED", time.time())
    w.put(good)
    w.put(bad)
    w.close()
    assert store.task(tid).state == "READY"
    assert len(w.stats.rejected) == 1 and "READY -> FINISHED" in w.stats.rejected[0][1]


CHILD = """
import os, sys, time
from balsam_dask.store import Store
from balsam_dask.store.procwriter import ProcessWriter
from tests.store.test_writer import _lifecycle_ops
s = Store(sys.argv[1])
w = ProcessWriter(s, max_batch=50, max_delay=0.02)
w.put_many(_lifecycle_ops(s, 100, "orphan"))
time.sleep(1.0)  # the feeder ships everything
print(w._proc.pid, flush=True)
os._exit(0)  # the scheduler process dies without closing anything
"""


def test_writer_outlives_nothing_when_its_parent_dies(store_url: str) -> None:
    Store(store_url).close()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", CHILD, store_url], capture_output=True, text=True, cwd=root,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.split()[-1])
    deadline = time.time() + 30
    while time.time() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the writer process outlived its parent"
    s = Store(store_url)
    try:
        assert s.count(tags={"proc": "orphan"}, state="FINISHED") == 100  # what it received was written
    finally:
        s.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
