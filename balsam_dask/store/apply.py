"""Apply a batch of write operations in one transaction.

Order inside the batch: new tasks, then transitions (validated against the state
machine and the tasks' current states), then field updates, allocations and
heartbeats. Validation happens before the first write, so an illegal transition or
an unknown task writes nothing. ``replay=True`` (a batch whose commit may or may not
have happened, after a lost connection) first drops the operations already present.
Payloads and results are signed here, as they are written (``signing.py``).
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, select, update

from balsam_dask.errors import UnknownTask
from balsam_dask.store import busy
from balsam_dask.store.models import allocations_t, events_t, sessions_t, tasks_t
from balsam_dask.store.ops import (
    DB_TASK_COLS,
    UPDATABLE_TASK_FIELDS,
    AllocationWrite,
    Heartbeat,
    NewTask,
    Op,
    Settle,
    TaskUpdate,
    Transition,
)
from balsam_dask.store.shapes import Shape, shape_of
from balsam_dask.store.signing import Signer
from balsam_dask.store.states import LEGAL, State, illegal

CHUNK = 2000
_CREATED = State.CREATED.value
_NOTHING: frozenset[str] = frozenset()


@dataclass
class ApplyStats:
    tasks: int = 0
    events: int = 0
    updates: int = 0
    skipped: int = 0
    #: Database tasks the batch ended whose children the caller settles (``Settle`` ops).
    settle: list[int] = field(default_factory=list)


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def existing_ids(conn: Connection, table: Table, ids: Sequence[int]) -> set[int]:
    found: set[int] = set()
    for part in chunks(ids):
        found.update(conn.execute(select(table.c.id).where(table.c.id.in_(part))).scalars())
    return found


TASK_COLS = (
    "id", "key", "name", "kind", "state", "priority", "nodes", "ranks_per_node", "threads_per_rank", "cores",
    "gpus", "walltime", "spec", "tags", "parents", "submitted_by", "attempt", "payload", "session_id",
    "kill_requested", "created_at", "updated_at", "state_at",
)  # fmt: skip
_STATE_COL, _ATTEMPT_COL, _UPDATED_COL, _STATE_AT_COL = (
    TASK_COLS.index(c) for c in ("state", "attempt", "updated_at", "state_at")
)
EVENT_COLS = ("id", "task_id", "attempt", "from_state", "to_state", "ts", "since", "worker", "hosts", "message")
_JSON_COLS = frozenset({"spec", "tags", "parents"})
_dumps = json.JSONEncoder(separators=(",", ":")).encode


#: The event columns' types for a binary COPY.
_PG_TYPES = {"id": "int8", "task_id": "int8", "attempt": "int4", "ts": "float8", "since": "float8"}
_PG_EVENT_TYPES = tuple(_PG_TYPES.get(c, "text") for c in EVENT_COLS)


def pg_copy(conn: Connection, table: str, cols: Sequence[str], rows: Sequence[tuple[Any, ...]],
            types: Sequence[str] | None = None) -> None:  # fmt: skip
    """Append rows with PostgreSQL's COPY (binary when the column types are given), inside
    the connection's transaction: the cheapest way in for the server and for the client (a
    fifth of the client's CPU of one INSERT over ``unnest``, a third of executemany's)."""
    raw = conn.connection.driver_connection
    assert raw is not None, "the connection is closed"
    fmt = " (FORMAT BINARY)" if types else ""
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN{fmt}") as cp:
        if types:
            cp.set_types(list(types))
        for row in rows:
            cp.write_row(row)


@functools.lru_cache(maxsize=4)
def raw_sql(dialect: str, task_cols: int = len(TASK_COLS)) -> dict[str, str]:
    """Hot-path statements in the driver's own parameter style. Bulk writes go through
    ``exec_driver_sql``: SQLAlchemy's per-row parameter processing cost more than the
    database itself (see benchmarks/store_bench.py). SQLite gets executemany of one row
    per statement (cheap in-process); on PostgreSQL task and event rows go by COPY
    (:func:`pg_copy`) and state updates are one statement per batch over ``unnest`` of
    column arrays (half the server's CPU of one statement per row). ``task_cols``: how many
    columns of ``TASK_COLS + DB_TASK_COLS`` a task insert writes."""
    if dialect == "postgresql":
        return {
            # %b: the arrays travel in binary (a third of the client's CPU of text arrays)
            "update_state": "UPDATE tasks AS t SET state = v.state, attempt = v.attempt, updated_at = v.ts, "
            "state_at = v.ts "
            "FROM unnest(%b::text[], %b::int[], %b::float8[], %b::bigint[]) AS v(state, attempt, ts, id) "
            "WHERE t.id = v.id",
            # one array parameter: the same statement text whatever the count (psycopg parses
            # it once; an IN list of N placeholders is parsed again, client and server, each time)
            "select_state": "SELECT id, state, nodes, cores, gpus, walltime, state_at FROM tasks "
            "WHERE id = ANY(%b::bigint[])",
        }
    cols = (TASK_COLS + DB_TASK_COLS)[:task_cols]
    return {
        "insert_task": f"INSERT INTO tasks ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
        "insert_event": f"INSERT INTO events ({', '.join(EVENT_COLS)}) VALUES ({', '.join('?' for _ in EVENT_COLS)})",
        "update_state": "UPDATE tasks SET state = ?1, attempt = ?2, updated_at = ?3, state_at = ?3 WHERE id = ?4",
    }


def _bulk(conn: Connection, statement: str, rows: list[tuple[Any, ...]]) -> None:
    """Run a raw_sql() bulk statement: executemany of rows (SQLite), or once with one
    array per column (PostgreSQL's ``unnest`` form), in chunks so no statement grows without bound."""
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql(statement, rows)
        return
    for part in chunks(rows, 20 * CHUNK):
        conn.exec_driver_sql(statement, tuple(list(col) for col in zip(*part, strict=True)))


def existing_event_ids(conn: Connection, task_ids: Sequence[int]) -> set[int]:
    """Ids of the events already stored for these tasks (the events' key is (task, id))."""
    found: set[int] = set()
    for part in chunks(sorted(set(task_ids))):
        q = select(events_t.c.id).where(events_t.c.task_id.in_(part))
        found.update(conn.execute(q).scalars())
    return found


def _task_row(op: NewTask, session_id: int, now: float, cache: dict[int, tuple[Any, ...]],
              signer: Signer) -> tuple[Any, ...]:  # fmt: skip
    """A task as a tuple in TASK_COLS order, its payload signed. Spec-derived columns are
    cached per spec object: ``client.map`` creates many tasks that share one spec."""
    spec = op.spec
    created = op.created_at or now
    parents = _dumps(list(op.parents)) if op.parents else "[]"
    payload = op.payload() if callable(op.payload) else op.payload
    if payload is not None:
        payload = signer.sign("payload", op.id, payload)
    if spec is None:
        head: tuple[Any, ...] = (op.name, op.kind or "dask", _CREATED, 0, 1, 1, 1, 1, 0, None, "{}", "{}")
    else:
        c = cache.get(id(spec))
        if c is None:
            r = spec.resources
            c = cache[id(spec)] = (
                spec.name, spec.kind, _CREATED, spec.priority, r.nodes, r.ranks_per_node, r.threads_per_rank,
                r.cores, r.gpus, r.walltime, _dumps(spec.to_json()), _dumps(dict(spec.tags)),
            )  # fmt: skip
        head = c
        if op.name or op.kind:
            head = (op.name or c[0], op.kind or c[1], *c[2:])
    row = (op.id, op.key, *head, parents, op.submitted_by, 0, payload, session_id, False, created, created, created)
    return row if op.db is None else row + op.db


@functools.lru_cache(maxsize=1024)
def _shape_memo(raw: tuple[int, int, int, float | None]) -> Shape:
    return shape_of(*raw)


def add_shape_counts(conn: Connection, deltas: Counter[tuple[Shape, str]]) -> None:
    """Add ``deltas`` to shape_counts in one upsert statement, rows in key order so
    concurrent writers lock them in the same order and cannot deadlock."""
    rows = [(s.nodes, s.cores, s.gpus, s.walltime, st, n) for (s, st), n in sorted(deltas.items()) if n]
    if not rows:
        return
    ph = "%s" if conn.dialect.name == "postgresql" else "?"
    values = ", ".join([f"({ph}, {ph}, {ph}, {ph}, {ph}, {ph})"] * len(rows))
    conn.exec_driver_sql(
        f"INSERT INTO shape_counts (nodes, cores, gpus, walltime, state, count) VALUES {values} "
        "ON CONFLICT (nodes, cores, gpus, walltime, state) DO UPDATE SET count = shape_counts.count + excluded.count",
        tuple(v for row in rows for v in row),
    )


def apply_ops(conn: Connection, ops: Sequence[Op], session_id: int, replay: bool = False, *,
              signer: Signer) -> ApplyStats:  # fmt: skip
    """Write ``ops`` through ``conn`` (already inside a write transaction); ``signer`` signs
    the payloads and results among them."""
    now = time.time()
    stats = ApplyStats()
    new_tasks: list[NewTask] = []
    transitions: list[Transition] = []
    updates: list[TaskUpdate] = []
    allocs: list[AllocationWrite] = []
    beats: dict[int, float] = {}
    for op in ops:
        t = type(op)
        if t is Transition:
            transitions.append(cast(Transition, op))
        elif t is NewTask:
            new_tasks.append(cast(NewTask, op))
        elif t is TaskUpdate:
            updates.append(cast(TaskUpdate, op))
        elif t is AllocationWrite:
            allocs.append(cast(AllocationWrite, op))
        elif t is Heartbeat:
            beats[op.session_id] = max(op.ts, beats.get(op.session_id, 0.0))  # type: ignore[union-attr]
        elif t is Settle:
            stats.settle.append(op.task_id)  # type: ignore[union-attr]  # for the caller: dag.settle_children
        else:
            raise TypeError(f"not a store operation: {op!r}")

    if replay:
        n0 = len(new_tasks) + len(transitions)
        if new_tasks:
            seen = existing_ids(conn, tasks_t, [t.id for t in new_tasks])
            new_tasks = [t for t in new_tasks if t.id not in seen]
        if transitions:
            seen = existing_event_ids(conn, [e.task_id for e in transitions])
            transitions = [e for e in transitions if e.id not in seen]
        stats.skipped = n0 - len(new_tasks) - len(transitions)

    cache: dict[int, tuple[Any, ...]] = {}
    task_rows = [_task_row(t, session_id, now, cache, signer) for t in new_tasks]
    deltas: Counter[tuple[Shape, str]] = Counter()
    # current state and shape of every task the batch touches
    state: dict[int, str] = {}
    entered: dict[int, float | None] = {}  # when each entered its state: its next event's ``since``
    shape: dict[int, Shape] = {}
    if task_rows:  # shapes come from the spec: count them per distinct shape, not per row
        for raw, n in Counter([(r[6], r[9], r[10], r[11]) for r in task_rows]).items():
            deltas[(_shape_memo(raw), _CREATED)] += n
        if transitions or updates:
            for r in task_rows:
                state[r[0]] = _CREATED
                entered[r[0]] = r[_STATE_AT_COL]
                shape[r[0]] = _shape_memo((r[6], r[9], r[10], r[11]))
    need = list(
        {e.task_id for e in transitions if e.task_id not in state}
        | {u.task_id for u in updates if u.task_id not in state}
    )
    raw_shape: dict[int, tuple[int, int, int, float | None]] = {}
    pg = conn.dialect.name == "postgresql"
    for part in chunks(need, 10 * CHUNK if pg else CHUNK):
        if pg:
            q, params = raw_sql("postgresql")["select_state"], (list(part),)
        else:
            marks = ", ".join(["?"] * len(part))
            q = f"SELECT id, state, nodes, cores, gpus, walltime, state_at FROM tasks WHERE id IN ({marks})"
            params = tuple(part)
        for tid, st, n, c, g, w, at in conn.exec_driver_sql(q, params).fetchall():
            state[tid] = st
            entered[tid] = at
            raw_shape[tid] = (n, c, g, w)
    if len(state) < len(need) + (len(task_rows) if transitions or updates else 0):
        missing = next(t for t in need if t not in state)
        raise UnknownTask(f"no task with id {missing} in the store")

    initial = dict(state) if transitions else {}
    last: dict[int, Transition] = {}  # task -> its last event in the batch
    event_rows: list[tuple[Any, ...]] = []
    add_row = event_rows.append
    legal = LEGAL
    for op in transitions:  # the hot loop: plain tuples, nothing allocated but the row
        eid, tid, _, to, ts, att, worker, hosts, message = op
        cur = state[tid]
        if to not in legal.get(cur, _NOTHING):
            raise illegal(cur, to, tid)
        since = entered[tid]
        if since is not None and ts < since:  # another clock (a worker's) ran behind: keep history causal
            ts = since
            op = op._replace(ts=ts)
        # from_state: the store's state is the truth, whatever the writer believed
        add_row((eid, tid, att, cur, to, ts, since, worker, hosts, message))
        state[tid] = to
        entered[tid] = ts
        last[tid] = op
    for u in updates:
        bad = set(u.fields) - UPDATABLE_TASK_FIELDS
        if bad:
            raise ValueError(f"cannot update task fields {sorted(bad)}; allowed: {sorted(UPDATABLE_TASK_FIELDS)}")
    if updates:
        updates = [_signed(u, signer) for u in updates]

    # --- writes ---
    sql = raw_sql(conn.dialect.name)
    born: set[int] = set()  # tasks created in this batch: their row goes in in its state after it
    if task_rows and last:
        for i, row in enumerate(task_rows):
            final = last.get(row[0])
            if final is not None:  # one row write instead of an insert and an update
                cols = list(row)
                cols[_STATE_COL], cols[_ATTEMPT_COL] = state[row[0]], final.attempt
                cols[_UPDATED_COL] = cols[_STATE_AT_COL] = final.ts
                task_rows[i] = tuple(cols)
                born.add(row[0])
    if task_rows:
        wide = len(TASK_COLS) + len(DB_TASK_COLS)  # database tasks' rows carry their own columns too
        for names, some in ((TASK_COLS, [r for r in task_rows if len(r) < wide]),
                            (TASK_COLS + DB_TASK_COLS, [r for r in task_rows if len(r) == wide])):  # fmt: skip
            if some and pg:
                pg_copy(conn, "tasks", names, some)
            elif some:
                conn.exec_driver_sql(raw_sql("sqlite", len(names))["insert_task"], some)
        stats.tasks = len(task_rows)
    if event_rows:
        if pg:
            pg_copy(conn, "events", EVENT_COLS, event_rows, _PG_EVENT_TYPES)
        else:
            _bulk(conn, sql["insert_event"], event_rows)
        stats.events = len(event_rows)
        busy.record(conn, busy.ended_runs(conn, event_rows))  # the nodes' busy stretches, for reports
        rows = []
        for tid, op in last.items():
            st = state[tid]
            if tid not in born:
                rows.append((st, op.attempt, op.ts, tid))
            old = initial[tid]
            if old != st:
                sh = shape.get(tid)
                if sh is None:
                    sh = shape[tid] = _shape_memo(raw_shape[tid])
                deltas[(sh, old)] -= 1
                deltas[(sh, st)] += 1
        if rows:
            _bulk(conn, sql["update_state"], rows)
    add_shape_counts(conn, deltas)
    if updates:
        _apply_updates(conn, updates, now)
        stats.updates = len(updates)
    if allocs:
        _apply_allocations(conn, allocs, session_id, now)
    for sid, ts in beats.items():
        conn.execute(update(sessions_t).where(sessions_t.c.id == sid).values(heartbeat_at=ts))
    return stats


def _signed(u: TaskUpdate, signer: Signer) -> TaskUpdate:
    """``u`` with its payload and result signed. The ``result`` column holds the one result
    of the task: its pickle, or the signed record of its file (``result_ref`` with the
    worker's ``result_digest``); a ``result_ref`` without a digest leaves no result a
    reader trusts."""
    f = u.fields
    if not ({"payload", "result", "result_ref", "result_digest"} & f.keys()):
        return u
    f = dict(f)
    tid = u.task_id
    if f.get("payload") is not None:
        f["payload"] = signer.sign("payload", tid, f["payload"])
    digest = f.pop("result_digest", None)
    if f.get("result") is not None:
        f["result"] = signer.sign("result", tid, f["result"])
        f.setdefault("result_ref", None)
    elif f.get("result_ref") is not None:
        f["result"] = signer.sign_file(tid, f["result_ref"], digest) if digest is not None else None
    return TaskUpdate(tid, f)


def _apply_updates(conn: Connection, updates: Sequence[TaskUpdate], now: float) -> None:
    # group by the set of fields so each group is one executemany
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for u in updates:
        names = tuple(sorted(u.fields))
        row = {f"_{k}": v for k, v in u.fields.items()}
        row["_id"] = u.task_id
        row["_now"] = now
        groups.setdefault(names, []).append(row)
    for names, rows in groups.items():
        values: dict[str, Any] = {k: bindparam(f"_{k}") for k in names}
        values["updated_at"] = bindparam("_now")
        stmt = update(tasks_t).where(tasks_t.c.id == bindparam("_id")).values(**values)
        conn.execute(stmt, rows)


def _apply_allocations(conn: Connection, allocs: Sequence[AllocationWrite], session_id: int, now: float) -> None:
    seen = existing_ids(conn, allocations_t, [a.id for a in allocs])
    for a in allocs:
        fields = dict(a.fields)
        fields["updated_at"] = now
        if a.id in seen:
            conn.execute(update(allocations_t).where(allocations_t.c.id == a.id).values(**fields))
        else:
            fields.setdefault("session_id", session_id)
            fields.setdefault("info", {})
            conn.execute(allocations_t.insert().values(id=a.id, **fields))
            seen.add(a.id)
