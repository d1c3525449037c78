"""``balsam_dask.Store``: the provenance store API (SQLite file or PostgreSQL)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, func, or_, select, text, update
from sqlalchemy.engine import URL

from balsam_dask.errors import InvalidSpec, StoreReadOnly, UnknownTask, UntrustedData
from balsam_dask.spec import TaskSpec
from balsam_dask.store import queries as Q
from balsam_dask.store.apply import ApplyStats, add_shape_counts, apply_ops, chunks
from balsam_dask.store.dag import settle_children
from balsam_dask.store.engine import (
    display,
    open_engine,
    read_tx,
    resolve_url,
    write_tx,
)
from balsam_dask.store.ids import IdAllocator
from balsam_dask.store.leases import Leases
from balsam_dask.store.models import allocations_t, sessions_t, shape_counts_t, tasks_t
from balsam_dask.store.ops import (
    AllocationRecord,
    AllocationWrite,
    EventRecord,
    NewTask,
    Op,
    SessionRecord,
    ShapeBacklog,
    TaskRecord,
    Transition,
)
from balsam_dask.store.reports import Reports
from balsam_dask.store.schema import ensure_schema
from balsam_dask.store.sessions import SESSION_STALE_AFTER, is_dead, open_session
from balsam_dask.store.shapes import Shape, shape_of
from balsam_dask.store.signing import FORMAT_DATA, FORMAT_FILE, signer_for
from balsam_dask.store.states import ALL_STATES, BACKLOG_STATES, UNFINISHED_STATES
from balsam_dask.store.taskdb import TaskDatabase
from balsam_dask.store.writer import BatchWriter


class Store(TaskDatabase, Leases, Reports):
    """The provenance store. ``Store()`` opens the default (``$BALSAM_DASK_STORE``, Dask
    config ``balsam-dask.store``, or ``./balsam.db``), creating its schema if needed.

    ``read_only=True`` opens it without ever writing (a store of another user, in a read-only
    directory...). ``key_file``: the key that signs its pickles (see ``store/signing.py``)."""

    def __init__(self, url: str | URL | None = None, *, create: bool = True, kind: str = "api",
                 read_only: bool = False, key_file: str | os.PathLike[str] | None = None) -> None:  # fmt: skip
        self.url = resolve_url(url)
        self.where = display(self.url)
        self.read_only = read_only
        #: True when a read-only SQLite store is opened as an immutable snapshot (its directory
        #: is not writable here): what may still be in its -wal file is not seen.
        self.snapshot: bool
        self.engine, self.snapshot = open_engine(self.url, self.where, create=create, read_only=read_only)
        self.signer = signer_for(self.url, key_file, guard=self._signed_by_some_key)
        try:
            self.revision = ensure_schema(self.engine, self.where, create=create and not read_only)
        except BaseException:
            self.engine.dispose()
            raise
        self._kind = kind
        self._session_id: int | None = None
        self._ids: IdAllocator | None = None
        self._own_ids: IdAllocator | None = None
        self._session_lock = threading.Lock()  # threads asking at once open one session

    def __repr__(self) -> str:
        return f"Store({self.where!r})"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def key_file(self) -> str:
        """The file of the key that signs this store's pickles."""
        return str(self.signer.path)

    def _signed_by_some_key(self) -> str | None:
        """Why this store must not get a new key: it holds data a key signed (that key is
        missing here). Asked once, before a key is made."""
        first = func.substr(tasks_t.c.payload, 1, 1)
        first_result = func.substr(tasks_t.c.result, 1, 1)
        data, ref = bytes([FORMAT_DATA]), bytes([FORMAT_FILE])
        q = select(tasks_t.c.id).where(or_(first == data, first_result.in_([data, ref]))).limit(1)
        with read_tx(self.engine) as conn:
            row = conn.execute(q).first()
        return None if row is None else f"the store {self.where} already holds data signed with a key (task {row[0]})"

    def _write_tx(self) -> AbstractContextManager[Connection]:
        if self.read_only:
            raise StoreReadOnly(f"the store {self.where} was opened read-only (read_only=True): it cannot be written")
        return write_tx(self.engine)

    # --- sessions and ids ---
    @property
    def session_id(self) -> int:
        """This process's session (opened on first use)."""
        if self._session_id is None:
            with self._session_lock:
                if self._session_id is None:
                    self._open_session()
        assert self._session_id is not None
        return self._session_id

    def _open_session(self) -> None:
        with self._write_tx() as conn:
            sid = open_session(conn, self._kind)
        self._ids = IdAllocator(sid)
        self._session_id = sid  # last: other threads read it without the lock

    def bind_session(self, session_id: int) -> None:
        """Write on behalf of an existing session (the writer process of a scheduler). A
        bound store makes no ids: the session's owner does."""
        self._session_id = session_id
        self._bound = True

    @property
    def ids(self) -> IdAllocator:
        if getattr(self, "_bound", False):
            raise RuntimeError("a store bound to another process's session cannot make ids")
        if self._ids is None:
            _ = self.session_id
        assert self._ids is not None
        return self._ids

    def new_id(self) -> int:
        return self.ids.next()

    def heartbeat(self) -> None:
        with self._write_tx() as conn:
            conn.execute(update(sessions_t).where(sessions_t.c.id == self.session_id).values(heartbeat_at=time.time()))

    def sessions(self) -> list[SessionRecord]:
        with read_tx(self.engine) as conn:
            return [Q.session_record(r) for r in conn.execute(Q.sessions_select)]

    def dead_sessions(self, stale_after: float = SESSION_STALE_AFTER) -> set[int]:
        """Sessions that ended, stopped heart-beating, or whose process is gone."""
        return {s.id for s in self.sessions() if s.id != self._session_id and is_dead(s, stale_after)}

    def close(self) -> None:
        """End this session and release connections."""
        if self._session_id is not None:
            with self._write_tx() as conn:
                conn.execute(update(sessions_t).where(sessions_t.c.id == self._session_id).values(ended_at=time.time()))
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes ---
    def apply(self, ops: Sequence[Op], *, replay: bool = False) -> ApplyStats:
        """Apply a batch of operations in one transaction (all or nothing). The waiting
        children of the database tasks it ends (``Settle`` ops) move on in the same transaction."""
        sid = self.session_id
        fresh = self._own_ids is None
        try:
            with self._write_tx() as conn:
                stats = apply_ops(conn, ops, sid, replay=replay, signer=self.signer)
                if stats.settle:  # database tasks ended: their waiting children move on, in this transaction
                    settled = settle_children(conn, stats.settle, self._dag_ids(conn).next, time.time())
                    if settled:
                        apply_ops(conn, settled, sid, signer=self.signer)
                return stats
        except BaseException:
            if fresh:  # a session opened in a transaction that did not commit does not exist
                self._own_ids = None
            raise

    def _dag_ids(self, conn: Connection) -> IdAllocator:
        """Ids for the events this store makes itself: its own, or (bound to a scheduler's
        session, which makes the others) those of a session of its own, opened in ``conn``."""
        if not getattr(self, "_bound", False):
            return self.ids
        if self._own_ids is None:
            self._own_ids = IdAllocator(open_session(conn, "writer"))
        return self._own_ids

    def writer(self, **options: Any) -> BatchWriter:
        """A batching writer bound to this store's session (see ``writer.py``)."""
        return BatchWriter(self, **options)

    def create_tasks(self, tasks: Iterable[NewTask | TaskSpec]) -> list[int]:
        """Create tasks in bulk (state CREATED); returns their ids in order."""
        ops: list[NewTask] = []
        for t in tasks:
            if isinstance(t, TaskSpec):
                tid = self.ids.next()
                ops.append(NewTask(tid, t.name or f"task-{tid}", t))
            elif isinstance(t, NewTask):
                ops.append(t if t.id else t._replace(id=self.ids.next()))
            else:
                raise InvalidSpec(f"cannot create a task from {t!r}: pass TaskSpec or NewTask objects")
        for part in chunks(ops, 20_000):
            self.apply(part)
        return [op.id for op in ops]

    def transition(self, task_id: int, to_state: str, *, message: str | None = None, worker: str | None = None,
                   attempt: int | None = None) -> None:  # fmt: skip
        """Move one task to ``to_state`` now (checked against the state machine)."""
        cur = self.task(task_id)
        attempt = cur.attempt if attempt is None else attempt
        self.apply(
            [Transition(self.new_id(), task_id, cur.state, to_state, time.time(), attempt, worker, None, message)]
        )

    def request_kill(self, ids: Iterable[int] | None = None, tags: Mapping[str, Any] | None = None) -> int:
        """Ask the running scheduler to kill unfinished tasks; returns how many were marked."""
        if ids is None and not tags:
            raise InvalidSpec("request_kill needs ids=[...] or tags={...}")
        conds = Q.task_filter(tags=tags, state=sorted(UNFINISHED_STATES))
        with self._write_tx() as conn:
            if ids is not None:
                ids = list(ids)
                known = {r for (r,) in conn.execute(select(tasks_t.c.id).where(tasks_t.c.id.in_(ids)))}
                missing = [i for i in ids if i not in known]
                if missing:
                    raise UnknownTask(f"no task with id {missing[0]} in {self.where}")
                conds.append(tasks_t.c.id.in_(ids))
            res = conn.execute(update(tasks_t).where(*conds).values(kill_requested=True, updated_at=time.time()))
            return int(res.rowcount)

    def kill_requests(self, session_id: int | None = None) -> list[int]:
        conds = Q.task_filter(state=sorted(UNFINISHED_STATES), session_id=session_id)
        with read_tx(self.engine) as conn:
            # the bare column, as in the partial index's WHERE: the planner then uses ix_tasks_kill
            q = select(tasks_t.c.id).where(text("kill_requested"), *conds)
            return list(conn.execute(q).scalars())

    # --- allocations ---
    def add_allocation(self, *, system: str, nodes: int, walltime: float, state: str = "PENDING",
                       scheduler_id: str | None = None, queue: str | None = None, account: str | None = None,
                       message: str | None = None, info: dict[str, Any] | None = None) -> int:  # fmt: skip
        aid = self.new_id()
        fields = {"system": system, "nodes": nodes, "walltime": walltime, "state": state, "scheduler_id": scheduler_id,
                  "queue": queue, "account": account, "message": message, "info": info or {},
                  "submitted_at": time.time()}  # fmt: skip
        self.apply([AllocationWrite(aid, fields)])
        return aid

    def update_allocation(self, alloc_id: int, **fields: Any) -> None:
        self.allocation(alloc_id)
        self.apply([AllocationWrite(alloc_id, fields)])

    def allocation(self, alloc_id: int) -> AllocationRecord:
        with read_tx(self.engine) as conn:
            row = conn.execute(Q.allocations_select.where(allocations_t.c.id == alloc_id)).first()
        if row is None:
            raise UnknownTask(f"no allocation with id {alloc_id} in {self.where}")
        return Q.allocation_record(row)

    def allocations(self, state: str | Iterable[str] | None = None) -> list[AllocationRecord]:
        q = Q.allocations_select
        if state is not None:
            q = q.where(allocations_t.c.state.in_([state] if isinstance(state, str) else list(state)))
        with read_tx(self.engine) as conn:
            return [Q.allocation_record(r) for r in conn.execute(q)]

    # --- reads ---
    def task(self, task_id: int) -> TaskRecord:
        with read_tx(self.engine) as conn:
            row = conn.execute(Q.task_select([tasks_t.c.id == task_id])).first()
        if row is None:
            raise UnknownTask(f"no task with id {task_id} in {self.where}")
        return Q.task_record(row)

    def tasks(self, *, state: str | Iterable[str] | None = None, tags: Mapping[str, Any] | None = None,
              name: str | None = None, key: str | None = None, kind: str | None = None, since: float | None = None,
              until: float | None = None, ids: Iterable[int] | None = None, limit: int | None = 100,
              offset: int = 0, after: int | None = None, newest_first: bool = False) -> list[TaskRecord]:  # fmt: skip
        """Tasks matching every filter, ordered by id. Page with ``limit`` and ``after``
        (the last id of the previous page; fast on any store size) or ``offset``."""
        conds = Q.task_filter(state=state, tags=tags, name=name, key=key, kind=kind, since=since, until=until, ids=ids)
        if after is not None:
            conds.append(tasks_t.c.id < after if newest_first else tasks_t.c.id > after)
        q = Q.task_select(conds).order_by(tasks_t.c.id.desc() if newest_first else tasks_t.c.id)
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        with read_tx(self.engine) as conn:
            return [Q.task_record(r) for r in conn.execute(q)]

    def count(self, **filters: Any) -> int:
        with read_tx(self.engine) as conn:
            return int(conn.execute(Q.count_select(Q.task_filter(**filters))).scalar_one())

    def history(self, task_id: int) -> list[EventRecord]:
        """Every recorded state change of a task, oldest first."""
        from balsam_dask.store.models import events_t

        with read_tx(self.engine) as conn:
            rows = conn.execute(Q.history_select.where(events_t.c.task_id == task_id)).all()
            if not rows and conn.execute(select(tasks_t.c.id).where(tasks_t.c.id == task_id)).first() is None:
                raise UnknownTask(f"no task with id {task_id} in {self.where}")
        return [Q.event_record(r) for r in rows]

    def events(self, task_ids: Iterable[int] | None = None) -> list[EventRecord]:
        from balsam_dask.store.models import events_t

        q = Q.history_select
        if task_ids is not None:
            q = q.where(events_t.c.task_id.in_(list(task_ids)))
        with read_tx(self.engine) as conn:
            return [Q.event_record(r) for r in conn.execute(q)]

    def payload(self, task_id: int) -> bytes | None:
        """The task's serialized Dask task (``payload.dump_payload``), verified: raises
        UntrustedData if this store's key did not sign it for this task."""
        with read_tx(self.engine) as conn:
            row = conn.execute(select(tasks_t.c.payload).where(tasks_t.c.id == task_id)).first()
        if row is None:
            raise UnknownTask(f"no task with id {task_id} in {self.where}")
        return None if row[0] is None else self.signer.open_payload(task_id, bytes(row[0]))

    def result_bytes(self, task_id: int) -> bytes | None:
        """The stored result of a task (a pickle): inline, or read from its result file;
        verified like :meth:`payload` (a file must be the one its worker wrote)."""
        with read_tx(self.engine) as conn:
            row = conn.execute(select(tasks_t.c.result, tasks_t.c.result_ref).where(tasks_t.c.id == task_id)).first()
        if row is None:
            raise UnknownTask(f"no task with id {task_id} in {self.where}")
        if row.result is not None:
            return self.signer.open_result(task_id, bytes(row.result))
        if row.result_ref:
            raise UntrustedData(task_id, f"its result file {row.result_ref} has no signed record (stored by a "
                                         "balsam_dask before it signed its store, or not by balsam_dask)")  # fmt: skip
        return None

    def summary(self, **filters: Any) -> dict[str, int]:
        """Task counts by state: all tasks from the shape counters (O(shapes), not O(tasks)), or
        those matching ``filters`` (``tasks``'s: state, tags, name, ids...) from the tasks."""
        if filters:
            q = select(tasks_t.c.state, func.count()).where(*Q.task_filter(**filters)).group_by(tasks_t.c.state)
        else:
            q = select(shape_counts_t.c.state, func.sum(shape_counts_t.c.count)).group_by(shape_counts_t.c.state)
        with read_tx(self.engine) as conn:
            got = {s: int(n) for s, n in conn.execute(q)}
        return {s: got.get(s, 0) for s in ALL_STATES if got.get(s, 0)}

    def backlog(self, states: Iterable[str] = BACKLOG_STATES | {"RUNNING"}) -> list[ShapeBacklog]:
        """Tasks by resource shape and state: what the packing policy reads."""
        wanted = Q.states_arg(list(states)) or []
        q = select(shape_counts_t).where(shape_counts_t.c.state.in_(wanted), shape_counts_t.c.count > 0)
        by_shape: dict[Shape, dict[str, int]] = {}
        with read_tx(self.engine) as conn:
            for r in conn.execute(q):
                m = r._mapping
                shape = Shape(m["nodes"], m["cores"], m["gpus"], m["walltime"])
                by_shape.setdefault(shape, {})[m["state"]] = int(m["count"])
        return [ShapeBacklog(s.nodes, s.cores, s.gpus, s.walltime, c) for s, c in sorted(by_shape.items())]

    def rebuild_counts(self) -> None:
        """Recompute the shape counters from the tasks table (repair tool)."""
        cols = (tasks_t.c.nodes, tasks_t.c.cores, tasks_t.c.gpus, tasks_t.c.walltime, tasks_t.c.state)
        q = select(*cols, func.count()).group_by(*cols)
        with self._write_tx() as conn:
            deltas: Counter[tuple[Shape, str]] = Counter()
            for nodes, cores, gpus, walltime, state, n in conn.execute(q):
                deltas[(shape_of(nodes, cores, gpus, walltime), state)] += n
            conn.execute(shape_counts_t.delete())
            add_shape_counts(conn, deltas)
