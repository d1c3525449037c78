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

from balsam_dask.errors import UntrustedData, WrongKey
from balsam_dask.protocol import ResumeItem
from balsam_dask.scheduler.recorder import path_to
from balsam_dask.store.api import Store
from balsam_dask.store.ops import Transition
from balsam_dask.store.states import State


def claim_for_resume(store: Store, limit: int | None = None) -> list[ResumeItem]:
    """Claim resumable tasks; returns one plan entry per task, parents first.

    Each entry: key, task_id, state, attempt, payload (bytes) and ``data``: the stored
    results of its finished parents ``{key: {"task_id", "result"}}``, both verified against
    the store's key. A task whose payload is not trusted (UntrustedData), or whose parent can
    neither be resumed nor read back, is marked FAILED with the reason, and left out."""
    store.signer.key()  # a missing key (for a store that holds signed data) fails here, before claiming
    claimed = {t.id: t for t in store.claim(limit)}
    if not claimed:
        return []
    parent_ids = {p for t in claimed.values() for p in t.parents} - set(claimed)
    parents = {t.id: t for t in store.tasks(ids=sorted(parent_ids), limit=None)} if parent_ids else {}
    results: dict[int, bytes | Exception | None] = {}
    plan: dict[int, ResumeItem] = {}
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
                try:
                    results[pid] = store.result_bytes(pid)
                except WrongKey as e:
                    raise _not_resumed(e) from None
                except (UntrustedData, OSError) as e:
                    results[pid] = e
            blob = results[pid]
            if isinstance(blob, Exception):
                problem = f"cannot resume: the result of parent {pid} ({p.key}) cannot be used: {blob}"
                break
            if blob is None:
                problem = f"cannot resume: the result of parent {pid} ({p.key}) was not stored"
                break
            data[p.key] = {"task_id": pid, "result": blob}
        if problem:
            failed.append((t.id, t.state, problem))
            continue
        try:
            payload = store.payload(t.id)
        except WrongKey as e:
            raise _not_resumed(e) from None
        except UntrustedData as e:
            failed.append((t.id, t.state, f"cannot resume: {e}"))
            continue
        assert payload is not None  # claim() only takes durable tasks
        plan[t.id] = {"key": t.key, "task_id": t.id, "state": t.state, "attempt": t.attempt,
                      "payload": payload, "data": data, "parents": [p for p in t.parents if p in claimed]}  # fmt: skip
    _fail_dependents(plan, failed)
    if failed:
        now = time.time()
        ops = []
        for tid, st, why in failed:  # by the legal path (RUN_DONE passes through RESTART_READY)
            steps = path_to(st, State.FAILED.value) or (State.FAILED.value,)
            for prev, to in zip((st, *steps), steps, strict=False):
                ops.append(Transition(store.new_id(), tid, prev, to, now, message=why if to == steps[-1] else None))
        store.apply(ops)
    return _parents_first(plan)


def _fail_dependents(plan: dict[int, ResumeItem], failed: list[tuple[int, str, str]]) -> None:
    """Take out of ``plan`` the tasks whose claimed parent could not be resumed (their graph
    would miss it), as failed, and theirs in turn."""
    gone = {tid for tid, _, _ in failed}
    changed = bool(gone)
    while changed:
        changed = False
        for tid, item in list(plan.items()):
            bad = next((p for p in item["parents"] if p in gone), None)
            if bad is not None:
                del plan[tid]
                gone.add(tid)
                failed.append((tid, item["state"], f"cannot resume: parent {bad} could not be resumed"))
                changed = True


def _not_resumed(e: WrongKey) -> WrongKey:
    """Signed with another key: this scheduler has the wrong key file, so no task is failed
    for it; the tasks it claimed stay claimed until it stops (then another may take them)."""
    return WrongKey(e.task_id, f"{e.what}; nothing was resumed (the tasks taken stay with this scheduler until it "
                               "stops, then a scheduler with that key can resume them)")  # fmt: skip


def _parents_first(plan: dict[int, ResumeItem]) -> list[ResumeItem]:
    out: list[ResumeItem] = []
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
