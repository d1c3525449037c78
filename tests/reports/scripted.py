"""A scripted run with every time known: 2 nodes x 4 cores (one released at +80 s), six tasks.

Seconds after ``B`` (the window is +0 .. +100; runs are ``[start, end)``)::

    t1 sim  2 cores  ready 0   run node-0 10-40 (done)
    t2 sim  4 cores  ready 0   run node-1 20-50 (done)
    t3 sim  1 core   ready 0   run node-0 30-35 (error "ValueError: boom"), retry 45-65 on node-0 (done)
    t4 sim  2 cores  ready 0   run node-1 60-70 (error "ValueError: boom"): FAILED at 70
    t5 sim  1 core   ready 5   never runs: KILLED at 80
    t6 post 1 core   ready 0   run node-0 70-90 (lost: "worker node-0 lost"), 95-100 on node-1 (done)

The allocation: submitted -30, started -10, ended +100, one node released at +80.
"""

from __future__ import annotations

from balsam_dask.spec import Resources, TaskSpec
from balsam_dask.store import AllocationWrite, NewTask, Store, Transition

B = 1_700_000_000.0
BOOM = "ValueError: boom"
LOST = "worker node-0 lost"


def build(store: Store) -> dict[str, int]:
    """Write the scripted run into ``store``; the task ids by name (t1 ... t6)."""
    ids: dict[str, int] = {}
    ops: list[NewTask | Transition] = []
    specs = {"t1": ("sim", 2, "a"), "t2": ("sim", 4, "a"), "t3": ("sim", 1, "a"), "t4": ("sim", 2, "a"),
             "t5": ("sim", 1, "a"), "t6": ("post", 1, "b")}  # fmt: skip
    for key, (name, cores, exp) in specs.items():
        ids[key] = store.new_id()
        spec = TaskSpec(name=name, resources=Resources.serial(cores), tags={"exp": exp})
        ops.append(NewTask(ids[key], f"{name}-{key}", spec, created_at=B))

    def go(key: str, frm: str, to: str, at: float, attempt: int = 0, worker: str | None = None,
           message: str | None = None) -> None:  # fmt: skip
        ops.append(Transition(store.new_id(), ids[key], frm, to, B + at, attempt, worker, None, message))

    for key in ("t1", "t2", "t3", "t4", "t6"):
        go(key, "CREATED", "READY", 0)
    go("t5", "CREATED", "READY", 5)
    for key, start, end, node in (("t1", 10, 40, "node-0"), ("t2", 20, 50, "node-1")):
        go(key, "READY", "RUNNING", start, 1, node)
        go(key, "RUNNING", "RUN_DONE", end, 1, node)
        go(key, "RUN_DONE", "FINISHED", end, 1)
    go("t3", "READY", "RUNNING", 30, 1, "node-0")
    go("t3", "RUNNING", "RUN_ERROR", 35, 1, None, BOOM)
    go("t3", "RUN_ERROR", "RESTART_READY", 35, 1, None, "retrying")
    go("t3", "RESTART_READY", "RUNNING", 45, 2, "node-0")
    go("t3", "RUNNING", "RUN_DONE", 65, 2, "node-0")
    go("t3", "RUN_DONE", "FINISHED", 65, 2)
    go("t4", "READY", "RUNNING", 60, 1, "node-1")
    go("t4", "RUNNING", "RUN_ERROR", 70, 1, None, BOOM)
    go("t4", "RUN_ERROR", "FAILED", 70, 1, None, BOOM)
    go("t5", "READY", "KILLED", 80, 0, None, "killed on request")
    go("t6", "READY", "RUNNING", 70, 1, "node-0")
    go("t6", "RUNNING", "RESTART_READY", 90, 1, None, LOST)
    go("t6", "RESTART_READY", "RUNNING", 95, 2, "node-1")
    go("t6", "RUNNING", "RUN_DONE", 100, 2, "node-1")
    go("t6", "RUN_DONE", "FINISHED", 100, 2)
    store.apply(ops)
    info = {"cores_per_node": 4, "gpus_per_node": 0, "released": [{"worker": "slurm-1-1", "host": "n1", "at": B + 80}]}
    store.apply([AllocationWrite(store.new_id(), {
        "system": "slurm", "scheduler_id": "4242", "nodes": 2, "walltime": 3600.0, "state": "FINISHED",
        "submitted_at": B - 30, "started_at": B - 10, "ended_at": B + 100, "info": info,
    })])  # fmt: skip
    return ids
