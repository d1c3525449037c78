"""Changing database tasks after submission: select by filters, modify, retry, kill, remove.

Every change takes one write transaction; what a filter selects but a change does not apply to
is counted as skipped, while a task named by id that it does not apply to is an error (nothing
is written). A task claimed by a service (``lease_owner`` with a lease not yet expired) is
running or about to: it is killed by request (``kill_requested``), never modified or removed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, delete, update

from balsam_dask.errors import InvalidSpec, UnknownTask
from balsam_dask.store import busy
from balsam_dask.store import queries as Q
from balsam_dask.store.apply import add_shape_counts, chunks
from balsam_dask.store.dag import AWAITING, KILLED, children_of, start_state, task_states
from balsam_dask.store.models import events_t, task_parents_t, tasks_t, transfers_t
from balsam_dask.store.ops import TaskRecord, TaskUpdate, Transition
from balsam_dask.store.shapes import Shape, shape_of
from balsam_dask.store.states import FINAL_STATES, UNFINISHED_STATES, State
from balsam_dask.taskdb import fields as taskfields
from balsam_dask.taskdb.apps import AppDef
from balsam_dask.taskdb.rows import FIELDS, RowChecker, TaskRow

#: Database tasks that wait to run: what modify changes and kill ends at once.
WAITING = frozenset({State.CREATED.value, State.AWAITING_PARENTS.value, State.READY.value,
                     State.RESTART_READY.value})  # fmt: skip
#: Waiting and never run: a database task removable before it ends.
UNSTARTED = frozenset({State.CREATED.value, State.AWAITING_PARENTS.value, State.READY.value})
#: What ``modify`` may change (params, tags and env are merged into the task's own).
MODIFIABLE = tuple(f for f in FIELDS if f not in ("app", "version", "function", "parents"))
MERGED = ("params", "tags", "env")


class Outcome(NamedTuple):
    """How many tasks a change applied to, and how many the filters matched that it did not."""

    done: int
    skipped: int


def select_tasks(conn: Connection, what: str, where: str, *, ids: Iterable[int] | None, tags: Mapping[str, Any] | None,
                 state: str | Iterable[str] | None, name: str | None) -> list[TaskRecord]:  # fmt: skip
    """The tasks matching every filter (at least one is required), locked on PostgreSQL."""
    if ids is None and not tags and state is None and name is None:
        raise InvalidSpec(f"{what} needs task ids or a filter: ids=[...], tags={{...}}, state=... or name=..., "
                          f"e.g. balsam-dask {what} --tag exp=sweep1")  # fmt: skip
    id_list = None if ids is None else list(ids)
    q = Q.task_select(Q.task_filter(tags=tags, state=state, name=name, ids=id_list)).order_by(tasks_t.c.id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(of=tasks_t)
    records = [Q.task_record(r) for r in conn.execute(q)]
    if id_list:
        found = {t.id for t in records}
        missing = [i for i in id_list if i not in found]
        if missing and not (tags or state is not None or name is not None):
            raise UnknownTask(f"no task with id {missing[0]} in {where}")
    return records


def eligible(records: list[TaskRecord], why_not: Callable[[TaskRecord], str | None], named: bool,
             what: str) -> tuple[list[TaskRecord], int]:  # fmt: skip
    """The records a change applies to, and how many it skips; with ``named`` (ids given) a
    record it does not apply to is an error."""
    out = []
    for t in records:
        reason = why_not(t)
        if reason is None:
            out.append(t)
        elif named:
            raise InvalidSpec(f"cannot {what} task {t.id}: {reason}; nothing was changed")
    return out, len(records) - len(out)


def leased(t: TaskRecord, now: float) -> bool:
    return t.lease_owner is not None and (t.lease_expires or 0.0) > now


def not_waiting(t: TaskRecord, now: float) -> str | None:
    """Why a task is not a waiting database task (None if it is)."""
    if t.target is None:
        return "it is a client's task (its scheduler runs it)"
    if t.state not in WAITING:
        return f"it is {t.state}; only tasks waiting to run ({', '.join(sorted(WAITING))}) can be"
    if leased(t, now):
        return f"a service (session {t.lease_owner}) has claimed it"
    return None


def row_of(t: TaskRecord) -> dict[str, Any]:
    """A database task as a submission row (to check it again with changes)."""
    s = t.spec
    row: dict[str, Any] = {"app": t.app, "version": t.app_version} if t.app else {"function": t.function}
    row.update(nodes=t.nodes, ranks_per_node=t.ranks_per_node, threads_per_rank=t.threads_per_rank,
               gpus_per_rank=s.get("gpus_per_rank", 0), retries=s.get("retries", 0), priority=t.priority)  # fmt: skip
    for k in ("walltime", "timeout", "env", "launcher", "workdir"):
        if s.get(k) is not None:
            row[k] = s[k]
    for k, v in (("name", t.name), ("tags", t.tags), ("params", t.params), ("args", t.args),
                 ("input_files", t.input_files), ("stage_in", t.stage_in), ("stage_out", t.stage_out),
                 ("on_parent_failure", t.on_parent_failure)):  # fmt: skip
        if v:
            row[k] = v
    return row


def with_changes(row: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for k, v in changes.items():
        if k in MERGED:
            check = taskfields.env if k == "env" else taskfields.params
            out[k] = {**out.get(k, {}), **check(v)}
            continue
        for a, canonical in taskfields.ALIASES.items():
            if k in (a, canonical):
                out.pop(a, None)
                out.pop(canonical, None)
        out[k] = v
    return out


def check_changes(changes: Mapping[str, Any]) -> None:
    if not changes:
        raise InvalidSpec(f"modify needs a change, e.g. {{'priority': 10}}; fields are {', '.join(MODIFIABLE)}")
    for k in changes:
        if k not in MODIFIABLE:
            raise InvalidSpec(f"{k!r} cannot be modified; modifiable fields are {', '.join(MODIFIABLE)}")


def modify(conn: Connection, records: list[TaskRecord], changes: Mapping[str, Any],
           apps: Mapping[str, Mapping[int, AppDef]], now: float) -> None:  # fmt: skip
    """Write ``changes`` to these waiting database tasks (each checked as a row first)."""
    checker = RowChecker(apps)
    rows: list[dict[str, Any]] = []
    deltas: Counter[tuple[Shape, str]] = Counter()
    for t in records:
        new = checker.check(with_changes(row_of(t), changes), f"task {t.id}")
        rows.append(_columns(t.id, new, now))
        r = new.spec.resources
        deltas[(shape_of(t.nodes, t.cores, t.gpus, t.walltime), t.state)] -= 1
        deltas[(shape_of(r.nodes, r.cores, r.gpus, r.walltime), t.state)] += 1
    if rows:
        stmt = update(tasks_t).where(tasks_t.c.id == bindparam("_id"))
        conn.execute(stmt.values({k: bindparam(f"_{k}") for k in rows[0] if k != "id"}),
                     [{f"_{k}": v for k, v in row.items()} for row in rows])  # fmt: skip
    add_shape_counts(conn, deltas)


def _columns(tid: int, r: TaskRow, now: float) -> dict[str, Any]:
    spec, res = r.spec, r.spec.resources

    def load(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    return {"id": tid, "name": r.name, "kind": spec.kind, "priority": spec.priority, "nodes": res.nodes,
            "ranks_per_node": res.ranks_per_node, "threads_per_rank": res.threads_per_rank, "cores": res.cores,
            "gpus": res.gpus, "walltime": res.walltime, "spec": spec.to_json(), "tags": spec.tag_dict,
            "params": load(r.params), "args": load(r.args), "input_files": load(r.input_files),
            "stage_in": load(r.stage_in), "stage_out": load(r.stage_out),
            "on_parent_failure": r.on_parent_failure, "updated_at": now}  # fmt: skip


def retries(conn: Connection, records: list[TaskRecord], new_id: Callable[[], int],
            now: float) -> tuple[list[Transition | TaskUpdate], dict[int, str]]:  # fmt: skip
    """FAILED -> RESTART_READY for these failed database tasks, then AWAITING_PARENTS for those
    whose parents are not all FINISHED, their leases cleared (any service may take them); and
    why the tasks whose parent stays failed are not retried (a missing parent counts as KILLED)."""
    restarting = {t.id for t in records}
    states = task_states(conn, {p for t in records for p in t.parents} - restarting)
    states.update(dict.fromkeys(restarting, State.RESTART_READY.value))
    ops: list[Transition | TaskUpdate] = []
    why: dict[int, str] = {}
    for t in records:
        after, cause = start_state([(p, states.get(p, KILLED)) for p in t.parents], t.on_parent_failure or "fail")
        if after == State.FAILED.value:
            why[t.id] = f"its {cause}: retry the parent too"
            continue
        ops.append(Transition(new_id(), t.id, t.state, State.RESTART_READY.value, now, t.attempt, None, None,
                              "retry requested"))  # fmt: skip
        ops.append(TaskUpdate(t.id, {"lease_owner": None, "lease_expires": None}))
        if after == AWAITING:
            ops.append(Transition(new_id(), t.id, State.RESTART_READY.value, AWAITING, now, t.attempt))
    return ops, why


def removable(conn: Connection, records: list[TaskRecord], now: float) -> tuple[list[TaskRecord], dict[int, str]]:
    """The tasks that may go (ended, or database tasks never started), and why the others may
    not; a task with a child that has not ended stays while the child stays."""
    why: dict[int, str] = {}
    for t in records:
        if t.state in FINAL_STATES:
            continue
        if t.target is None:
            why[t.id] = f"it is {t.state}: a client's task is removed once it has ended"
        elif t.state not in UNSTARTED or t.attempt or leased(t, now):
            why[t.id] = f"it is {t.state}{' and claimed by a service' if leased(t, now) else ''}: kill it first"
    going = {t.id for t in records} - why.keys()
    edges = children_of(conn, going)
    states = task_states(conn, {k for _, k in edges})
    changed = True
    while changed:  # a child that stays keeps its parents, and (unfinished) theirs
        changed = False
        for p, k in edges:
            if p in going and k not in going and states.get(k) in UNFINISHED_STATES:
                going.discard(p)
                why[p] = f"its child {k} has not ended (remove or kill it too)"
                changed = True
    return [t for t in records if t.id in going], why


def remove(conn: Connection, records: list[TaskRecord]) -> None:
    """Delete these tasks, their events and their DAG edges; uncount their shapes."""
    ids = [t.id for t in records]
    deltas: Counter[tuple[Shape, str]] = Counter()
    for t in records:
        deltas[(shape_of(t.nodes, t.cores, t.gpus, t.walltime), t.state)] -= 1
    pc = task_parents_t.c
    workers: set[str] = set()  # whose busy stretches change
    for part in chunks(ids):
        workers |= busy.workers_of(conn, part)
        conn.execute(delete(events_t).where(events_t.c.task_id.in_(part)))
        conn.execute(delete(transfers_t).where(transfers_t.c.task_id.in_(part)))
        conn.execute(delete(task_parents_t).where(pc.parent_id.in_(part)))
        conn.execute(delete(tasks_t).where(tasks_t.c.id.in_(part)))
    pairs = [{"p": p, "c": t.id} for t in records for p in t.parents]
    if pairs:
        conn.execute(delete(task_parents_t).where(pc.parent_id == bindparam("p"), pc.child_id == bindparam("c")),
                     pairs)  # fmt: skip
    add_shape_counts(conn, deltas)
    busy.rebuild(conn, workers)
