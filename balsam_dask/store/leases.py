"""Who runs which task: the resume claim of a dead client session's durable tasks, and the
leases of ``balsam-dask serve`` on database tasks (a part of ``Store``).

A service claims runnable database tasks by setting ``lease_owner`` (its session) and
``lease_expires``, renews its leases by heartbeat, and gives back what it did not start when it
stops. A lease that expires (its service was killed, or hung) lets another service take the
task: a task that was running is moved to RESTART_READY first (or KILLED if a kill was asked),
never one that has ended. PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so services claiming at
once split the work; SQLite: one writer at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, or_, select, text, update

from balsam_dask.store import queries as Q
from balsam_dask.store.apply import apply_ops, chunks
from balsam_dask.store.dag import settle_children
from balsam_dask.store.models import DB_TASK_WHERE, tasks_t
from balsam_dask.store.ops import TaskRecord, TaskUpdate, Transition
from balsam_dask.store.sessions import SESSION_STALE_AFTER
from balsam_dask.store.states import ACTIVE_STATES, RUNNABLE_STATES, UNFINISHED_STATES, State

if TYPE_CHECKING:
    from balsam_dask.store.ids import IdAllocator
    from balsam_dask.store.signing import Signer

_RESTART, _KILLED = State.RESTART_READY.value, State.KILLED.value
_LEASE_EXPIRED = "the lease of service {owner} expired (it was killed or hung): started again"


class Leases:
    """Claims and leases (a mixin of ``Store``)."""

    if TYPE_CHECKING:
        signer: Signer

        @property
        def session_id(self) -> int: ...

        @property
        def ids(self) -> IdAllocator: ...

        def _write_tx(self) -> AbstractContextManager[Connection]: ...

        def dead_sessions(self, stale_after: float = ...) -> set[int]: ...

        def tasks(self, *, ids: Iterable[int] | None = None, limit: int | None = 1000) -> list[TaskRecord]: ...

    def claim(self, limit: int | None = None, *, states: Iterable[str] = UNFINISHED_STATES, durable_only: bool = True,
              stale_after: float = SESSION_STALE_AFTER) -> list[TaskRecord]:  # fmt: skip
        """Atomically take ownership of unfinished tasks whose session is dead (resume)."""
        dead = self.dead_sessions(stale_after)
        if not dead:
            return []
        me = self.session_id
        conds = Q.task_filter(state=sorted(states))
        conds.append(tasks_t.c.session_id.in_(sorted(dead)))
        if durable_only:
            conds.append(tasks_t.c.payload.is_not(None))
        q = select(tasks_t.c.id).where(*conds).order_by(tasks_t.c.priority.desc(), tasks_t.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self._write_tx() as conn:
            ids = _locked_ids(conn, q)
            for part in chunks(ids):
                conn.execute(update(tasks_t).where(tasks_t.c.id.in_(part)).values(session_id=me))
        return self.tasks(ids=ids, limit=None) if ids else []

    def claim_runnable(self, limit: int, *, lease: float, tags: Mapping[str, str] | None = None,
                       apps: Sequence[str] | None = None) -> list[TaskRecord]:  # fmt: skip
        """Lease up to ``limit`` runnable database tasks (READY, RESTART_READY; highest priority
        first) to this session for ``lease`` seconds: ``tags`` all match, ``app`` one of
        ``apps`` when given. They become this session's (its kill requests reach it)."""
        now = time.time()
        me = self.session_id
        conds = Q.task_filter(state=sorted(RUNNABLE_STATES), tags=tags)
        conds += [text(f"({DB_TASK_WHERE})"), ~tasks_t.c.kill_requested,
                  or_(tasks_t.c.lease_owner.is_(None), tasks_t.c.lease_expires < now)]  # fmt: skip
        if apps is not None:
            conds.append(tasks_t.c.app.in_(list(apps)))
        q = select(tasks_t.c.id).where(*conds).order_by(tasks_t.c.priority.desc(), tasks_t.c.id).limit(limit)
        with self._write_tx() as conn:
            ids = _locked_ids(conn, q)
            for part in chunks(ids):
                conn.execute(update(tasks_t).where(tasks_t.c.id.in_(part))
                             .values(lease_owner=me, lease_expires=now + lease, session_id=me))  # fmt: skip
        return self.tasks(ids=ids, limit=None) if ids else []

    def renew_leases(self, lease: float) -> int:
        """Extend this session's leases on unfinished tasks by ``lease`` seconds from now."""
        c = tasks_t.c
        with self._write_tx() as conn:
            res = conn.execute(update(tasks_t).where(c.lease_owner == self.session_id,
                                                     c.state.in_(sorted(UNFINISHED_STATES)))
                               .values(lease_expires=time.time() + lease))  # fmt: skip
        return int(res.rowcount or 0)

    def release_leases(self, ids: Iterable[int] | None = None) -> int:
        """Give back this session's leases on tasks it has not started (all, or these)."""
        c = tasks_t.c
        conds = [c.lease_owner == self.session_id, c.state.in_(sorted(RUNNABLE_STATES))]
        with self._write_tx() as conn:
            n = 0
            for part in chunks(sorted(ids)) if ids is not None else [None]:
                q = update(tasks_t).where(*conds, *([c.id.in_(part)] if part is not None else []))
                n += int(conn.execute(q.values(lease_owner=None, lease_expires=None)).rowcount or 0)
        return n

    def requeue_expired(self) -> int:
        """Running database tasks whose lease has expired: RESTART_READY (KILLED when a kill
        was asked, their waiting children settled), lease cleared. Returns how many."""
        now = time.time()
        c = tasks_t.c
        q = select(c.id, c.state, c.attempt, c.lease_owner, c.kill_requested).where(
            text(f"({DB_TASK_WHERE})"), c.state.in_(sorted(ACTIVE_STATES)), c.lease_owner.is_not(None),
            c.lease_expires < now,
        )  # fmt: skip
        sid, ids = self.session_id, self.ids
        with self._write_tx() as conn:
            rows = conn.execute(q.with_for_update(skip_locked=True) if conn.dialect.name == "postgresql" else q).all()
            if not rows:
                return 0
            ops: list[Any] = []
            killed = []
            for tid, state, attempt, owner, kill in rows:
                to = _KILLED if kill else _RESTART
                why = "killed on request (its service's lease expired)" if kill else _LEASE_EXPIRED.format(owner=owner)
                ops.append(Transition(ids.next(), tid, state, to, now, attempt, None, None, why))
                ops.append(TaskUpdate(tid, {"lease_owner": None, "lease_expires": None}))
                if kill:
                    killed.append(tid)
            apply_ops(conn, ops, sid, signer=self.signer)
            if killed:
                apply_ops(conn, settle_children(conn, killed, ids.next, now), sid, signer=self.signer)
        return len(rows)


def _locked_ids(conn: Connection, q: Any) -> list[int]:
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    return list(conn.execute(q).scalars())
