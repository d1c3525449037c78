"""Resuming durable tasks after the scheduler and client died.

Balsam tasks are stored with their serialized Dask task (``payload``) and, once finished,
their result. A new scheduler on the same store claims the unfinished tasks of dead
sessions (atomically: two resuming clusters never take the same task), and the client
submits them again under their old keys; the results of their finished parents come from
the store, so no finished task runs again.
"""

from __future__ import annotations

import time
from typing import Any

from balsam_dask.store.api import Store
from balsam_dask.store.ops import Transition
from balsam_dask.store.states import State


def claim_for_resume(store: Store, limit: int | None = None) -> list[dict[str, Any]]:
    """Claim resumable tasks; returns one plan entry per task, parents first.

    Each entry: key, task_id, state, attempt, payload (bytes) and ``data``: the stored
    results of its finished parents ``{key: {"task_id", "result"}}``. A task whose parent can neither be
    resumed nor read back is marked FAILED with the reason, and left out."""
    claimed = {t.id: t for t in store.claim(limit)}
    if not claimed:
        return []
    parent_ids = {p for t in claimed.values() for p in t.parents} - set(claimed)
    parents = {t.id: t for t in store.tasks(ids=sorted(parent_ids), limit=None)} if parent_ids else {}
    results: dict[int, bytes | None] = {}
    plan: dict[int, dict[str, Any]] = {}
    failed: list[tuple[int, str, str]] = []
    for t in claimed.values():
        data: dict[str, dict[str, Any]] = {}
        problem = None
        for pid in t.parents:
            if pid in claimed:
                continue
            p = parents.get(pid)
            if p is None or p.state != State.FINISHED:
                problem = f"cannot resume: parent {pid} ({p.state if p else 'missing'}) is not durable"
                break
            if pid not in results:
                results[pid] = store.result_bytes(pid)
            blob = results[pid]
            if blob is None:
                problem = f"cannot resume: the result of parent {pid} ({p.key}) was not stored"
                break
            data[p.key] = {"task_id": pid, "result": blob}
        if problem:
            failed.append((t.id, t.state, problem))
            continue
        payload = store.payload(t.id)
        assert payload is not None  # claim() only takes durable tasks
        plan[t.id] = {"key": t.key, "task_id": t.id, "state": t.state, "attempt": t.attempt,
                      "payload": payload, "data": data, "parents": [p for p in t.parents if p in claimed]}  # fmt: skip
    if failed:
        now = time.time()
        store.apply([Transition(store.new_id(), tid, st, State.FAILED.value, now, message=why)
                     for tid, st, why in failed])  # fmt: skip
    return _parents_first(plan)


def _parents_first(plan: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    done: set[int] = set()

    def visit(tid: int, stack: set[int]) -> None:
        if tid in done or tid not in plan or tid in stack:
            return
        stack.add(tid)
        for p in plan[tid]["parents"]:
            visit(p, stack)
        done.add(tid)
        out.append(plan[tid])

    for tid in sorted(plan):
        visit(tid, set())
    return out
