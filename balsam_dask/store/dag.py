"""The DAG of database tasks: where a task starts given its parents' states, and what the end of
a parent does to the children waiting for it.

A child waits in AWAITING_PARENTS until every parent is FINISHED, then is READY. A FAILED or
KILLED parent fails it, naming the parent (``on_parent_failure: fail``, the default), or, with
``run``, it is READY once every parent has ended whatever the outcome. Edges are the
``task_parents`` table, clustered by parent. Whoever ends a task (``kill`` here, ``serve``
later) calls :func:`settle_children` in the same transaction, after writing the end: on
PostgreSQL :func:`task_states` share-locks the parents a new child is added under, so a parent
cannot end unseen between the child's check and its insert.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, select

from balsam_dask.store.apply import chunks, pg_copy
from balsam_dask.store.models import task_parents_t, tasks_t
from balsam_dask.store.ops import Transition
from balsam_dask.store.states import FINAL_STATES, State

FINISHED, FAILED, KILLED = State.FINISHED.value, State.FAILED.value, State.KILLED.value
READY, AWAITING = State.READY.value, State.AWAITING_PARENTS.value


def start_state(parents: Sequence[tuple[int, str]], policy: str) -> tuple[str, str | None]:
    """(state, message) for a task whose parents ``(id, state)`` are as given."""
    if all(s == FINISHED for _, s in parents):
        return READY, None
    if policy == "run":
        if all(s in FINAL_STATES for _, s in parents):
            return READY, "every parent has ended (on_parent_failure=run)"
        return AWAITING, None
    bad = next(((p, s) for p, s in parents if s in (FAILED, KILLED)), None)
    if bad is not None:
        return FAILED, f"parent {bad[0]} is {bad[1]} (on_parent_failure=fail)"
    return AWAITING, None


def task_states(conn: Connection, ids: Collection[int], *, lock: bool = False) -> dict[int, str]:
    """The states of these tasks (those that exist). ``lock``: on PostgreSQL, share-locked
    until the transaction ends (SQLite's write transaction holds the whole store)."""
    out: dict[int, str] = {}
    for part in chunks(sorted(ids)):
        q = select(tasks_t.c.id, tasks_t.c.state).where(tasks_t.c.id.in_(part))
        if lock and conn.dialect.name == "postgresql":
            q = q.with_for_update(read=True)
        out.update((i, s) for i, s in conn.execute(q))
    return out


def add_edges(conn: Connection, edges: Sequence[tuple[int, int]]) -> None:
    """Insert ``(parent_id, child_id)`` edges."""
    if not edges:
        return
    if conn.dialect.name == "postgresql":
        pg_copy(conn, "task_parents", ("parent_id", "child_id"), edges, ("int8", "int8"))
    else:
        conn.exec_driver_sql("INSERT INTO task_parents (parent_id, child_id) VALUES (?, ?)", list(edges))


def children_of(conn: Connection, parents: Iterable[int]) -> list[tuple[int, int]]:
    """The ``(parent_id, child_id)`` edges leaving these tasks."""
    out: list[tuple[int, int]] = []
    c = task_parents_t.c
    for part in chunks(sorted(set(parents))):
        out.extend((p, k) for p, k in conn.execute(select(c.parent_id, c.child_id).where(c.parent_id.in_(part))))
    return out


def settle_children(conn: Connection, ended: Iterable[int], new_id: Callable[[], int],
                    now: float) -> list[Transition]:  # fmt: skip
    """The transitions that move the waiting children of tasks that ended (already written in
    this transaction) to READY or FAILED, and the children of those that fail, down the DAG."""
    ops: list[Transition] = []
    decided: dict[int, str] = {}
    frontier = set(ended)
    while frontier:
        kids = {k for _, k in children_of(conn, frontier)} - decided.keys()
        frontier = set()
        rows: list[Any] = []
        cols = (tasks_t.c.id, tasks_t.c.parents, tasks_t.c.on_parent_failure, tasks_t.c.attempt)
        for part in chunks(sorted(kids)):
            rows += conn.execute(select(*cols).where(tasks_t.c.id.in_(part), tasks_t.c.state == AWAITING)).all()
        states = task_states(conn, {p for r in rows for p in r.parents})
        states.update(decided)
        for tid, parents, policy, attempt in rows:
            state, why = start_state([(p, states.get(p, KILLED)) for p in parents], policy or "fail")
            if state == AWAITING:
                continue
            ops.append(Transition(new_id(), tid, AWAITING, state, now, attempt, None, None, why))
            decided[tid] = state
            if state == FAILED:
                frontier.add(tid)
    return ops
