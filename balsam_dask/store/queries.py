"""Read-side query building and row conversion for the Store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Select, and_, func, literal, select, tuple_

from balsam_dask.errors import InvalidSpec
from balsam_dask.spec import validate_tags
from balsam_dask.store.models import allocations_t, events_t, sessions_t, tasks_t
from balsam_dask.store.ops import AllocationRecord, EventRecord, SessionRecord, TaskRecord
from balsam_dask.store.states import ALL_STATES

MAX_ID = (1 << 63) - 1
TASK_COLUMNS = [c for c in tasks_t.c if c.name not in ("result", "payload")]
_has_result = (tasks_t.c.result.is_not(None)).label("has_result")
_has_payload = (tasks_t.c.payload.is_not(None)).label("has_payload")


def states_arg(state: str | Iterable[str] | None) -> list[str] | None:
    if state is None:
        return None
    states = [state] if isinstance(state, str) else list(state)
    for s in states:
        if s not in ALL_STATES:
            raise InvalidSpec(f"state {s!r} is unknown; use one of: {', '.join(ALL_STATES)}")
    return states


def like_pattern(name: str) -> str | None:
    """A name glob (``fit-*``, ``run-?``) as a LIKE pattern escaped with ``\\``; None for a plain name."""
    if "*" not in name and "?" not in name:
        return None
    return name.replace("%", r"\%").replace("_", r"\_").replace("*", "%").replace("?", "_")


def task_filter(
    *,
    state: str | Iterable[str] | None = None,
    tags: Mapping[str, Any] | None = None,
    name: str | None = None,
    key: str | None = None,
    kind: str | None = None,
    since: float | None = None,
    until: float | None = None,
    ids: Iterable[int] | None = None,
    session_id: int | None = None,
) -> list[Any]:
    conds: list[Any] = []
    states = states_arg(state)
    if states is not None:
        conds.append(tasks_t.c.state.in_(states))
    for k, v in validate_tags(tags):
        conds.append(tasks_t.c.tags[k].as_string() == v)
    if name is not None:
        pattern = like_pattern(name)
        conds.append(tasks_t.c.name == name if pattern is None else tasks_t.c.name.like(pattern, escape="\\"))
    if key is not None:
        conds.append(tasks_t.c.key == key)
    if kind is not None:
        conds.append(tasks_t.c.kind == kind)
    if since is not None:
        conds.append(tasks_t.c.created_at >= since)
    if until is not None:
        conds.append(tasks_t.c.created_at < until)
    if ids is not None:
        conds.append(tasks_t.c.id.in_(list(ids)))
    if session_id is not None:
        conds.append(tasks_t.c.session_id == session_id)
    return conds


def state_cursor(state: str, after: int | None, newest_first: bool) -> list[Any]:
    """``state = s`` (and ``id > after``) written as a range of the (state, id) key."""
    key = tuple_(tasks_t.c.state, tasks_t.c.id)
    if newest_first:
        return [key < tuple_(literal(state), literal(after if after is not None else MAX_ID)), tasks_t.c.state >= state]
    return [key > tuple_(literal(state), literal(after if after is not None else -1)), tasks_t.c.state <= state]


def task_select(conds: list[Any]) -> Select[Any]:
    q = select(*TASK_COLUMNS, _has_result, _has_payload)
    return q.where(and_(*conds)) if conds else q


def count_select(conds: list[Any]) -> Select[Any]:
    q = select(func.count()).select_from(tasks_t)
    return q.where(and_(*conds)) if conds else q


def task_record(row: Any) -> TaskRecord:
    m = row._mapping
    return TaskRecord(**{k: m[k] for k in TaskRecord.__slots__})


def event_record(row: Any) -> EventRecord:
    m = row._mapping
    return EventRecord(**{k: m[k] for k in EventRecord.__slots__})


def allocation_record(row: Any) -> AllocationRecord:
    m = row._mapping
    return AllocationRecord(**{k: m[k] for k in AllocationRecord.__slots__})


def session_record(row: Any) -> SessionRecord:
    m = row._mapping
    return SessionRecord(**{k: m[k] for k in SessionRecord.__slots__})


#: Oldest first: by time, then id (events of several sessions: a store writer settling a DAG, a service)
history_select = select(events_t).order_by(events_t.c.ts, events_t.c.id)
allocations_select = select(allocations_t).order_by(allocations_t.c.id)
sessions_select = select(sessions_t).order_by(sessions_t.c.id)
