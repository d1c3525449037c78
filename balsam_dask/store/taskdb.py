"""The task database's part of ``Store``: apps, and tasks added from the database side (the CLI,
a file, a few lines of Python) for ``balsam-dask serve`` to run. They share the tasks table,
the state machine and the events with a client's tasks, so ``ls``/``show`` see both.

:meth:`TaskDatabase.add_tasks` checks every row before it writes (``taskrows.check_rows``:
one bad row writes nothing), then writes them all in one transaction through the batch path of
the store (``apply_ops``: ``NewTask`` rows born in their first state, with their
CREATED -> READY / AWAITING_PARENTS / FAILED events) and the DAG's edges.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NoReturn

from balsam_dask.errors import InvalidSpec, InvalidTaskRow, UnknownApp
from balsam_dask.store import apps as A
from balsam_dask.store import taskctl as C
from balsam_dask.store.apply import apply_ops
from balsam_dask.store.dag import add_edges, settle_children, start_state, task_states
from balsam_dask.store.engine import read_tx
from balsam_dask.store.ops import AppRecord, DbTask, NewTask, Op, TaskUpdate, Transition
from balsam_dask.store.states import UNFINISHED_STATES, State
from balsam_dask.taskdb.apps import AppDef
from balsam_dask.taskdb.rows import TaskRow, check_rows

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from balsam_dask.store.ids import IdAllocator
    from balsam_dask.store.signing import Signer

_CREATED = State.CREATED.value
Filters = dict[str, Any]


class TaskDatabase:
    """Apps and database tasks (a mixin of ``Store``)."""

    if TYPE_CHECKING:
        engine: Engine
        where: str
        signer: Signer

        @property
        def session_id(self) -> int: ...

        @property
        def ids(self) -> IdAllocator: ...

        def _write_tx(self) -> AbstractContextManager[Connection]: ...

    # --- apps ---
    def add_app(self, name: str, command: str | Sequence[str], *, version: int | None = None,
                description: str | None = None, defaults: Mapping[str, Any] | None = None,
                hooks: Mapping[str, str] | None = None) -> AppRecord:  # fmt: skip
        """Add an app: a command template (every parameter shell-quoted when rendered) or an argv
        list; ``defaults``: resources (``taskfields.DEFAULT_FIELDS``), ``env``, ``launcher``;
        ``hooks``: import paths (``pre``, ``post``, ``error``, ``timeout``). Without ``version``,
        the next version, unless the latest is the same definition (returned as it is)."""
        app = AppDef(name, command if isinstance(command, str) else tuple(command), version, description,
                     defaults or {}, hooks or {})  # fmt: skip
        with self._write_tx() as conn:
            rec, _ = A.add_app(conn, app)
        return rec

    def apps(self, name: str | None = None) -> list[AppRecord]:
        """Every app version (of one name), by name and version."""
        with read_tx(self.engine) as conn:
            return A.load_apps(conn, name)

    def app(self, name: str, version: int | None = None) -> AppRecord:
        """One app: the given version, or the latest."""
        versions = {r.version: r for r in self.apps(name)}
        if not versions or (version is not None and version not in versions):
            raise A.unknown_app(name, version, list(versions), self.where)
        return versions[max(versions) if version is None else version]

    def remove_app(self, name: str, version: int | None = None) -> int:
        """Remove an app's versions (or one); refused while unfinished tasks use them."""
        with self._write_tx() as conn:
            return A.remove_app(conn, name, version, self.where)

    # --- tasks ---
    def add_tasks(self, rows: Iterable[Mapping[str, Any]], *, labels: Sequence[str] | None = None) -> list[int]:
        """Add database tasks from rows (``taskrows.FIELDS``); their ids in order. Every row
        is checked first: an error (:class:`InvalidTaskRow`) names the row (``labels[i]``, else
        ``row N``) and the field, and nothing is written."""
        with read_tx(self.engine) as conn:
            apps = A.app_defs(conn)
        checked = check_rows(rows, apps, labels)
        if not checked:
            return []
        sid, ids = self.session_id, self.ids  # before the write transaction (a session is a write)
        task_ids = [ids.next() for _ in checked]
        now = time.time()
        with self._write_tx() as conn:
            self._check_targets(conn, checked)
            parents = task_states(conn, {p for r in checked for p in r.parent_ids}, lock=True)
            ops: list[Op] = []
            add = ops.append
            edges: list[tuple[int, int]] = []
            first: list[str] = []  # each row's first state
            event_id, ready, make_db = ids.next, State.READY.value, DbTask._make
            for i, r in enumerate(checked):
                tid = task_ids[i]
                state, why, pids = ready, None, r.parent_ids
                if r.parent_ids or r.parent_rows:
                    pids += tuple(task_ids[j] for j in r.parent_rows)
                    states = [(p, parents.get(p) or self._missing(i, p, labels)) for p in r.parent_ids]
                    states += [(task_ids[j], first[j]) for j in r.parent_rows]
                    state, why = start_state(states, r.on_parent_failure)
                    edges += [(p, tid) for p in pids]
                first.append(state)
                key = f"{r.app or r.function.rpartition(':')[2]}-{tid}"  # type: ignore[union-attr]
                # TaskRow's fields 2 to 10 are DbTask's
                add(NewTask(tid, key, r.spec, None, r.name, pids, None, now, None, make_db(r[2:11])))
                add(Transition(event_id(), tid, _CREATED, state, now, 0, None, None, why))
            apply_ops(conn, ops, sid, signer=self.signer)
            add_edges(conn, edges)
        return task_ids

    def _check_targets(self, conn: Connection, rows: list[TaskRow]) -> None:
        """Every app version the rows use is still stored (one may have been removed meanwhile)."""
        stored = {(a.name, a.version) for a in A.load_apps(conn)}
        for r in rows:
            if r.app is not None and (r.app, r.app_version) not in stored:
                raise UnknownApp(f"app {r.app} version {r.app_version} was removed while the tasks were checked; "
                                 "nothing was written")  # fmt: skip

    def _missing(self, i: int, parent: int, labels: Sequence[str] | None) -> NoReturn:
        where = labels[i] if labels is not None else f"row {i + 1}"
        raise InvalidTaskRow(where, "parents", f"no task with id {parent} in {self.where}; give a stored task's id "
                             "(balsam-dask ls) or the name of an earlier row", i)  # fmt: skip

    def modify_tasks(self, changes: Mapping[str, Any], **filters: Any) -> C.Outcome:
        """Change fields (``taskctl.MODIFIABLE``; params, tags and env are merged) of the
        database tasks waiting to run that match ``filters`` (ids, tags, state, name)."""
        C.check_changes(changes)
        now = time.time()
        with read_tx(self.engine) as conn:
            apps = A.app_defs(conn)
        with self._write_tx() as conn:
            records = C.select_tasks(conn, "modify", self.where, **_filters(filters))
            chosen, skipped = C.eligible(records, lambda t: C.not_waiting(t, now), filters.get("ids") is not None,
                                         "modify")  # fmt: skip
            C.modify(conn, chosen, changes, apps, now)
        return C.Outcome(len(chosen), skipped)

    def retry_tasks(self, **filters: Any) -> C.Outcome:
        """FAILED -> RESTART_READY (then AWAITING_PARENTS while a parent has not finished) for the
        failed database tasks matching ``filters``."""
        now = time.time()
        named = filters.get("ids") is not None
        sid, ids = self.session_id, self.ids  # before the write transaction (a session is a write)
        with self._write_tx() as conn:
            records = C.select_tasks(conn, "retry", self.where, **_filters(filters))
            chosen, skipped = C.eligible(records, _not_failed, named, "retry")
            ops, why = C.retries(conn, chosen, ids.next, now)
            if why and named:
                tid, reason = next(iter(why.items()))
                raise InvalidSpec(f"cannot retry task {tid}: {reason}; nothing was changed")
            apply_ops(conn, ops, sid, signer=self.signer)
        return C.Outcome(len(chosen) - len(why), skipped + len(why))

    def kill_tasks(self, **filters: Any) -> C.Outcome:
        """End the matching tasks: database tasks waiting to run are KILLED now (their waiting
        children fail, or run, by their policy); the others that have not ended (running, or a
        client's) are marked for their scheduler or service to kill. ``done``: killed now."""
        now = time.time()
        sid, ids = self.session_id, self.ids
        with self._write_tx() as conn:
            records = C.select_tasks(conn, "kill", self.where, **_filters(filters))
            ending = [t for t in records if C.not_waiting(t, now) is None]
            later = [t for t in records if t.state in UNFINISHED_STATES and C.not_waiting(t, now) is not None]
            ops: list[Op] = [Transition(ids.next(), t.id, t.state, State.KILLED.value, now, t.attempt, None,
                                        None, "killed on request") for t in ending]  # fmt: skip
            ops += [TaskUpdate(t.id, {"kill_requested": True}) for t in later]
            apply_ops(conn, ops, sid, signer=self.signer)
            settled = settle_children(conn, [t.id for t in ending], ids.next, now)
            apply_ops(conn, settled, sid, signer=self.signer)
        return C.Outcome(len(ending), len(later))

    def remove_tasks(self, **filters: Any) -> C.Outcome:
        """Delete the matching tasks that have ended, or database tasks never started, with
        their events; a task whose child has not ended stays."""
        now = time.time()
        with self._write_tx() as conn:
            records = C.select_tasks(conn, "rm", self.where, **_filters(filters))
            going, why = C.removable(conn, records, now)
            if why and filters.get("ids") is not None:
                tid, reason = next(iter(why.items()))
                raise InvalidSpec(f"cannot remove task {tid}: {reason}; nothing was removed")
            C.remove(conn, going)
        return C.Outcome(len(going), len(why))


def _not_failed(t: Any) -> str | None:
    if t.target is None:
        return "it is a client's task (retry it with the client)"
    return None if t.state == State.FAILED.value else f"it is {t.state}, not FAILED"


def _filters(filters: Mapping[str, Any]) -> Filters:
    unknown = set(filters) - {"ids", "tags", "state", "name"}
    if unknown:
        raise InvalidSpec(f"unknown filter(s) {', '.join(sorted(unknown))}: filters are ids, tags, state and name")
    return {k: filters.get(k) for k in ("ids", "tags", "state", "name")}
