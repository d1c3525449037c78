"""Store throughput and latency: ours against the raw database driver (DESIGN.md §3, §8).

Not collected by pytest. Sizes come from the command line, for example::

    .venv/bin/python benchmarks/store_bench.py --tasks 200000 --events 400000 --big 1000000 \\
        --repeat 3 --backends sqlite,postgresql \\
        --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test

For each backend (a SQLite file in a temporary directory; for PostgreSQL a schema made
for the run, reached through ``?options=-csearch_path%3D<schema>`` and dropped at the
end) it measures:

1. task rows/s through ``Store.create_tasks`` (client.map-like calls sharing one TaskSpec
   each, with tags, names, keys, parents and payloads) against the raw driver's
   ``executemany`` writing the same rows into the same table, one transaction per chunk
   of the same size;
2. events/s through the batching writer (``put`` of the lifecycle
   CREATED->READY->RUNNING->RUN_DONE->FINISHED, ~``--in-flight`` tasks interleaved as a
   scheduler produces them, timed from the first ``put`` to ``flush()`` returning)
   against the raw driver writing the same event rows and the same task state updates,
   batch for batch;
3. on a store of ``--big`` tasks (mostly a READY/CREATED backlog): the latency of
   ``backlog()``, ``summary()``, ``tasks(...)`` queries on an open store, and of
   ``balsam-dask ls --state READY --limit 50`` as a subprocess (process start included).

The raw baselines replay exactly what the store handed the driver in bulk: every
``executemany`` it made is captured with SQLAlchemy's ``before_cursor_execute`` event and
grouped by commit, so "the same rows, the same statements, the same transactions" holds
by construction. On PostgreSQL the store appends task and event rows with COPY and sends
state updates as one statement over ``unnest`` of column arrays (COPYs are captured by
wrapping ``apply.pg_copy``); the baseline replays the same rows, batch for batch, the way a
driver user would: ``executemany`` of the one-row INSERT/UPDATE. The raw SQLite connection
uses the store's pragmas (WAL, synchronous=NORMAL) and ``BEGIN IMMEDIATE``; the raw
PostgreSQL connection is psycopg 3 (``executemany`` pipelines, as under SQLAlchemy).
Repetitions alternate ours/raw and medians are reported. The last line printed is one JSON object of all figures.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import io
import json
import os
import platform
import pstats
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url

from balsam_dask.spec import Resources, TaskSpec
from balsam_dask.store import NewTask, Store, Transition
from balsam_dask.store import apply as apply_mod

# Targets on this machine (2 cores), from the brief.
TARGET_SQLITE_TASKS_PER_S = 50_000
TARGET_SQLITE_EVENTS_PER_S = 100_000
TARGET_RATIO = 0.7
TARGET_BACKLOG_MS = 200.0

# Ids made by a pretend scheduler session (``session << 40 | seq``, like ids.py), so the
# same operations can be applied to several fresh stores.
TASK_ID_BASE = 4000 << 40
EVENT_ID_BASE = 4001 << 40
LIFECYCLE = (("CREATED", "READY"), ("READY", "RUNNING"), ("RUNNING", "RUN_DONE"), ("RUN_DONE", "FINISHED"))
WORKERS = tuple(f"tcp://10.1.{k // 32}.{10 + k % 32}:{40000 + k}" for k in range(64))
USERS = ("alice", "bob", "carol")
# a cloudpickled (function, args) is typically ~100-300 bytes
PAYLOAD_HEAD = b"\x80\x05\x95\x8a\x00\x00\x00\x00\x00\x00\x00\x8c\x0bsim.kernels\x94\x8c\x08simulate\x94"
PAYLOAD_TAIL = b"\x94K@G?\xb9\x99\x99\x99\x99\x99\x9a\x8c\x04fast\x94\x88\x87\x94." + bytes(range(64))


# --- workload -------------------------------------------------------------------------------------------------


def _pairs(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


def spec_for_call(call: int) -> tuple[str, TaskSpec]:
    """The function name and the one TaskSpec that ``client.map`` call number ``call`` uses."""
    kind = (0, 1, 0, 2, 0, 3, 5, 0, 4, 7, 0, 6)[call % 12]

    def tags(stage: str) -> tuple[tuple[str, str], ...]:
        return _pairs({"exp": f"sweep{call}", "user": USERS[call % len(USERS)], "stage": stage})

    if kind == 0:
        return "simulate", TaskSpec(resources=Resources.serial(1), tags=tags("sim"))
    if kind == 1:
        res = Resources.serial(4, walltime=600)
        return "fit", TaskSpec(resources=res, tags=tags("fit"), priority=5, retries=2)
    if kind == 2:
        return "postproc", TaskSpec(
            kind="app",
            resources=Resources.serial(2, walltime=1500),
            command="./post --in {path} --bins {bins}",
            params=_pairs({"bins": 64, "path": f"/scratch/run{call}"}),
            tags=tags("post"),
        )
    if kind == 3:
        res = Resources(nodes=1, ranks_per_node=1, threads_per_rank=1, gpus_per_rank=1, walltime=3000)
        return "train", TaskSpec(resources=res, tags=tags("train"), timeout=3600)
    if kind == 4:
        return "lammps", TaskSpec(
            kind="mpi",
            resources=Resources(nodes=2, ranks_per_node=4, threads_per_rank=2, walltime=7200),
            command=("./lmp", "-in", "in.lj"),
            env=(("OMP_PLACES", "cores"),),
            tags=tags("md"),
        )
    if kind == 5:
        return "quick", TaskSpec(resources=Resources.serial(1, walltime=90), tags=tags("sim"))
    if kind == 6:
        return "nwchem", TaskSpec(
            kind="mpi",
            resources=Resources(nodes=8, ranks_per_node=16, walltime=14400),
            command=("nwchem", "h2o.nw"),
            tags=tags("qc"),
        )
    return "check", TaskSpec(
        kind="app", resources=Resources.serial(1, walltime=45), command="./check {i}", tags=tags("check")
    )


def task_id(i: int) -> int:
    return TASK_ID_BASE | (i + 1)


def task_ops(start: int, n: int, block: int, rng: random.Random) -> list[NewTask]:
    """Tasks ``start..start+n-1``: ``client.map`` calls of ``block`` tasks sharing one spec,
    each with a Dask-like key, a name ``x-<i>``, a payload for Python functions and, for
    the post-processing apps, two parents from the previous call."""
    ops: list[NewTask] = []
    fn, spec, call = "", None, -1
    for i in range(start, start + n):
        c = i // block
        if c != call:
            call = c
            fn, spec = spec_for_call(call)
        assert spec is not None
        parents: tuple[int, ...] = ()
        if spec.kind == "app" and i >= block + 1:
            parents = (task_id(i - block), task_id(i - block - 1))
        payload = PAYLOAD_HEAD + i.to_bytes(8, "little") + PAYLOAD_TAIL if spec.kind == "python" else None
        ops.append(NewTask(task_id(i), f"{fn}-{rng.getrandbits(128):032x}", spec, None, f"x-{i}", parents, payload))
    return ops


def lifecycle_ops(ids: Sequence[int], in_flight: int, rng: random.Random) -> list[Transition]:
    """CREATED->READY->RUNNING->RUN_DONE->FINISHED for every task, about ``in_flight`` tasks
    interleaved at any time (a finished task's slot goes to the next one)."""
    ops: list[Transition] = []
    pending = iter(ids)
    active: list[list[Any]] = []  # [task id, next step, worker]
    for tid in pending:
        active.append([tid, 0, None])
        if len(active) >= in_flight:
            break
    ts = time.time()
    seq = 0
    while active:
        j = rng.randrange(len(active))
        slot = active[j]
        tid, step, worker = slot
        frm, to = LIFECYCLE[step]
        if step == 1:
            worker = slot[2] = WORKERS[rng.randrange(len(WORKERS))]
        seq += 1
        ts += 1e-5
        ops.append(Transition(EVENT_ID_BASE | seq, tid, frm, to, ts, 1 if step else 0, worker, None, None))
        if step + 1 < len(LIFECYCLE):
            slot[1] = step + 1
            continue
        nxt = next(pending, None)
        if nxt is None:
            active[j] = active[-1]
            active.pop()
        else:
            active[j] = [nxt, 0, None]
    return ops


# --- capture of what the store sends to the driver -------------------------------------------------------------


@dataclass
class Captured:
    """Bulk statements one transaction made: ``(sql, rows)`` in order."""

    statements: list[tuple[str, Sequence[Any]]] = field(default_factory=list)


class BulkCapture:
    """Records every ``executemany`` a Store's engine makes, grouped by transaction, and
    where the time goes: in those bulk statements, in other statements (BEGIN, reads,
    upserts), in commits (commit to the connection's return to the pool)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.txs: list[Captured] = []
        self.bulk_s = self.other_s = self.commit_s = 0.0
        self._cur = Captured()
        self._t_exec = self._t_commit = 0.0
        self._hooks: list[tuple[str, Callable[..., None]]] = [
            ("before_cursor_execute", self._before),
            ("after_cursor_execute", self._after),
            ("commit", self._on_commit),
            ("checkin", self._on_checkin),
        ]
        for name, fn in self._hooks:
            sa_event.listen(engine, name, fn)
        self._copy = apply_mod.pg_copy
        apply_mod.pg_copy = self._on_copy  # type: ignore[assignment]

    def _on_copy(self, conn: Any, table: str, cols: Sequence[str], rows: Sequence[tuple[Any, ...]],
                 types: Sequence[str] | None = None) -> None:  # fmt: skip
        """A PostgreSQL COPY of the store: replayed as the one-row INSERT a driver user writes."""
        marks = ", ".join("%s::jsonb" if c in apply_mod._JSON_COLS else "%s" for c in cols)
        self._cur.statements.append((f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", list(rows)))
        t0 = time.perf_counter()
        self._copy(conn, table, cols, rows, types)
        self.bulk_s += time.perf_counter() - t0

    def _before(self, conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if many:
            self._cur.statements.append((sql, params))
        else:
            row_sql = per_row_sql(sql)
            if row_sql is not None:  # a PostgreSQL batch over unnest: one row per array index
                self._cur.statements.append((row_sql, list(zip(*params, strict=True))))
        self._t_exec = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        dt = time.perf_counter() - self._t_exec
        if many or per_row_sql(sql) is not None:
            self.bulk_s += dt
        else:
            self.other_s += dt

    def _on_commit(self, conn: Any) -> None:
        if self._cur.statements:
            self.txs.append(self._cur)
        self._cur = Captured()
        self._t_commit = time.perf_counter()

    def _on_checkin(self, dbapi_conn: Any, record: Any) -> None:
        if self._t_commit:
            self.commit_s += time.perf_counter() - self._t_commit
            self._t_commit = 0.0

    def remove(self) -> None:
        for name, fn in self._hooks:
            sa_event.remove(self.engine, name, fn)
        apply_mod.pg_copy = self._copy

    def split(self, wall: float) -> dict[str, float]:
        rest = wall - self.bulk_s - self.other_s - self.commit_s
        return {"bulk": self.bulk_s, "other": self.other_s, "commit": self.commit_s, "python": rest}

    def only(self, *prefixes: str) -> list[Captured]:
        """The transactions restricted to statements starting with one of ``prefixes``."""
        out = []
        for tx in self.txs:
            keep = [(s, p) for s, p in tx.statements if _norm(s).startswith(prefixes)]
            if keep:
                out.append(Captured(keep))
        return out


@functools.lru_cache(maxsize=16)
def per_row_sql(sql: str) -> str | None:
    """The one-row statement equivalent to a store batch over ``unnest`` (None: not one)."""
    norm = _norm(sql)
    if "UNNEST(" in norm and norm.startswith("UPDATE TASKS AS T SET STATE"):
        return "UPDATE tasks SET state = %s, attempt = %s, updated_at = %s WHERE id = %s"
    return None


def _norm(sql: str) -> str:
    return " ".join(sql.split()).upper()


def _rows(txs: Sequence[Captured], prefix: str) -> int:
    return sum(len(p) for tx in txs for s, p in tx.statements if _norm(s).startswith(prefix))


# --- backends --------------------------------------------------------------------------------------------------


class Raw:
    """A raw driver connection replaying captured transactions."""

    def run(self, txs: Sequence[Captured]) -> dict[str, float]:
        """Replay ``txs``, one transaction each; seconds in executemany and in commits."""
        raise NotImplementedError

    def scalar(self, sql: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class RawSQLite(Raw):
    def __init__(self, path: str) -> None:
        self.con = sqlite3.connect(path, isolation_level=None)
        # the store's own connection settings (engine.py): same durability, same locking
        for pragma in ("journal_mode=WAL", "busy_timeout=60000", "synchronous=NORMAL", "temp_store=MEMORY"):
            self.con.execute(f"PRAGMA {pragma}")

    def run(self, txs: Sequence[Captured]) -> dict[str, float]:
        con = self.con
        clock = time.perf_counter
        bulk = commit = 0.0
        for tx in txs:
            con.execute("BEGIN IMMEDIATE")
            t0 = clock()
            for sql, rows in tx.statements:
                con.executemany(sql, rows)
            t1 = clock()
            con.execute("COMMIT")
            bulk += t1 - t0
            commit += clock() - t1
        return {"bulk": bulk, "commit": commit}

    def scalar(self, sql: str) -> Any:
        return self.con.execute(sql).fetchone()[0]

    def close(self) -> None:
        self.con.close()


class RawPG(Raw):
    def __init__(self, uri: str) -> None:
        import psycopg

        self.con = psycopg.connect(uri)

    def run(self, txs: Sequence[Captured]) -> dict[str, float]:
        con = self.con
        clock = time.perf_counter
        bulk = commit = 0.0
        for tx in txs:
            t0 = clock()
            with con.cursor() as cur:
                for sql, rows in tx.statements:
                    cur.executemany(sql, rows)
            t1 = clock()
            con.commit()
            bulk += t1 - t0
            commit += clock() - t1
        return {"bulk": bulk, "commit": commit}

    def scalar(self, sql: str) -> Any:
        with self.con.cursor() as cur:
            row = cur.execute(sql).fetchone()
        self.con.commit()
        return row[0] if row else None

    def close(self) -> None:
        self.con.close()


class Backend:
    name = ""

    def fresh(self) -> str:
        """The URL of an empty store (its schema is created by the first Store opened on it)."""
        raise NotImplementedError

    def discard(self, url: str) -> None:
        pass

    def raw(self, url: str) -> Raw:
        raise NotImplementedError

    def analyze(self) -> str | None:
        return None

    def close(self) -> None:
        pass


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, tmpdir: str) -> None:
        self.dir = tmpdir
        self.n = 0

    def fresh(self) -> str:
        self.n += 1
        return f"sqlite:///{self.dir}/store{self.n}.db"

    def discard(self, url: str) -> None:
        path = make_url(url).database or ""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.remove(path + suffix)

    def raw(self, url: str) -> Raw:
        return RawSQLite(make_url(url).database or "")


class PGBackend(Backend):
    """One schema for the run; a fresh store is that schema with its tables truncated."""

    name = "postgresql"

    def __init__(self, base_url: str) -> None:
        import psycopg

        self.base = make_url(base_url).set(drivername="postgresql+psycopg")
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        self._admin = psycopg.connect(self._libpq(self.base), autocommit=True)
        self._admin.execute(f'CREATE SCHEMA "{self.schema}"')
        self.url = self.base.update_query_dict({"options": f"-csearch_path={self.schema}"})

    @staticmethod
    def _libpq(url: Any) -> str:
        return str(url.set(drivername="postgresql").render_as_string(hide_password=False))

    def fresh(self) -> str:
        names = self._admin.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version'",
            (self.schema,),
        ).fetchall()
        if names:  # every table but the schema version: an empty store at the head revision
            tables = ", ".join(f'"{self.schema}"."{n}"' for (n,) in names)
            self._admin.execute(f"TRUNCATE {tables} RESTART IDENTITY")
        return str(self.url.render_as_string(hide_password=False))

    def raw(self, url: str) -> Raw:
        return RawPG(self._libpq(make_url(url)))

    def analyze(self) -> str:
        row = self._admin.execute("SHOW autovacuum").fetchone()
        self._admin.execute(f'ANALYZE "{self.schema}".tasks')
        self._admin.execute(f'ANALYZE "{self.schema}".shape_counts')
        auto = row[0] if row else "?"
        return f"ANALYZE run after the build, as autovacuum would (autovacuum is {auto} on this server)"

    def close(self) -> None:
        try:
            self._admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            self._admin.close()


# --- timing helpers --------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn`` takes and what it returned, with the pre-built inputs frozen out of
    the cyclic GC's view (collections the code under test triggers do not rescan them)."""
    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter()
        got = fn()
        return time.perf_counter() - t0, got
    finally:
        gc.unfreeze()


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def fmt_rate(x: float) -> str:
    return f"{x:>12,.0f}/s"


def say_split(ours: list[dict[str, float]], raw: list[dict[str, float]], n: int, unit: str) -> None:
    """Median seconds per run in each part, and microseconds per row."""

    def part(splits: list[dict[str, float]], key: str) -> str:
        v = med([sp[key] for sp in splits])
        return f"{v:.3f} s ({1e6 * v / n:.1f} us/{unit})"

    say(
        f"  where the time goes (medians): ours: bulk executemany {part(ours, 'bulk')}, "
        f"other SQL {part(ours, 'other')}, commits {part(ours, 'commit')}, "
        f"Python and the rest {part(ours, 'python')}"
    )
    say(f"                                 raw:  bulk executemany {part(raw, 'bulk')}, commits {part(raw, 'commit')}")


def verdict(ok: bool) -> str:
    return "OK" if ok else "BELOW TARGET"


def say(*parts: Any) -> None:
    print(*parts, flush=True)


# --- 1. bulk task inserts --------------------------------------------------------------------------------------


def bench_tasks(be: Backend, ops: list[NewTask], repeat: int, quiet: bool = False) -> dict[str, float]:
    ours: list[float] = []
    raw: list[float] = []
    ours_split: list[dict[str, float]] = []
    raw_split: list[dict[str, float]] = []
    replay: list[Captured] | None = None
    n = len(ops)

    def run_ours() -> None:
        nonlocal replay
        url = be.fresh()
        store = Store(url)
        try:
            _ = store.session_id  # the session row is opened before the clock starts
            cap = BulkCapture(store.engine)
            dt, _ = timed(lambda: store.create_tasks(ops))
            cap.remove()
            ours_split.append(cap.split(dt))
            got = store.count()
            if got != n:
                raise SystemExit(f"create_tasks wrote {got} tasks, expected {n}")
        finally:
            store.close()
            be.discard(url)
        ours.append(n / dt)
        if replay is None:
            replay = cap.only("INSERT INTO TASKS")
            if _rows(replay, "INSERT INTO TASKS") != n:
                raise SystemExit("could not capture the store's task inserts (did apply.py change?)")

    def run_raw() -> None:
        assert replay is not None
        url = be.fresh()
        Store(url).close()  # the same schema and indexes as ours
        conn = be.raw(url)
        try:
            dt, sp = timed(lambda: conn.run(replay or []))
            raw_split.append(sp)
            got = conn.scalar("SELECT count(*) FROM tasks")
            if got != n:
                raise SystemExit(f"raw insert wrote {got} tasks, expected {n}")
        finally:
            conn.close()
            be.discard(url)
        raw.append(n / dt)

    for r in range(repeat):
        for which in ("ours", "raw") if r % 2 == 0 else ("raw", "ours"):
            (run_ours if which == "ours" else run_raw)()
        if not quiet:
            say(f"  rep {r + 1}: ours {ours[-1]:,.0f}/s  raw {raw[-1]:,.0f}/s")
    assert replay is not None
    sizes = sorted({len(p) for tx in replay for _, p in tx.statements})
    o, w = med(ours), med(raw)
    out = {"tasks_per_s": o, "tasks_raw_per_s": w, "tasks_ratio": o / w}
    if not quiet:
        say(f"  rows per transaction: {sizes[-1]:,} ({len(replay)} transactions)")
        say_split(ours_split, raw_split, n, "row")
    return out


# --- 2. events through the batching writer ---------------------------------------------------------------------


def bench_events(
    be: Backend, tasks: list[NewTask], events: list[Transition], repeat: int, max_batch: int | None
) -> tuple[dict[str, float], list[int]]:
    ours: list[float] = []
    raw: list[float] = []
    ours_split: list[dict[str, float]] = []
    raw_split: list[dict[str, float]] = []
    replay: list[Captured] | None = None
    batch_sizes: list[int] = []
    n_ev = len(events)
    n_tasks = len(tasks)
    wopts = {} if max_batch is None else {"max_batch": max_batch}

    def prepared() -> tuple[str, Store]:
        """A store holding ``tasks`` (all CREATED), reopened as the raw side's is (on SQLite
        closing the last connection checkpoints the WAL: both sides start from the same file)."""
        url = be.fresh()
        with Store(url) as store:
            store.create_tasks(tasks)
        return url, Store(url)

    def run_ours() -> None:
        nonlocal replay
        url, store = prepared()
        try:
            cap = BulkCapture(store.engine)
            w = store.writer(**wopts)

            def go() -> None:
                put = w.put
                for op in events:
                    put(op)
                if not w.flush(timeout=600):
                    raise SystemExit("writer flush timed out")

            dt, _ = timed(go)
            w.close()
            cap.remove()
            ours_split.append(cap.split(dt))
            if w.stats.rejected:
                raise SystemExit(f"the writer rejected {len(w.stats.rejected)} ops: {w.stats.rejected[0]}")
            done = store.count(state="FINISHED")
            if done != n_tasks:
                raise SystemExit(f"{done} tasks FINISHED after the writer, expected {n_tasks}")
        finally:
            store.close()
            be.discard(url)
        ours.append(n_ev / dt)
        if replay is None:
            replay = cap.only("INSERT INTO EVENTS", "UPDATE TASKS SET STATE")
            batch_sizes.extend(sum(len(p) for s, p in tx.statements if "EVENTS" in _norm(s)) for tx in replay)
            if _rows(replay, "INSERT INTO EVENTS") != n_ev:
                raise SystemExit("could not capture the store's event inserts (did apply.py change?)")

    def run_raw() -> None:
        assert replay is not None
        url, store = prepared()
        store.close()
        conn = be.raw(url)
        try:
            dt, sp = timed(lambda: conn.run(replay or []))
            raw_split.append(sp)
            done = conn.scalar("SELECT count(*) FROM tasks WHERE state = 'FINISHED'")
            if done != n_tasks:
                raise SystemExit(f"{done} tasks FINISHED after the raw writes, expected {n_tasks}")
        finally:
            conn.close()
            be.discard(url)
        raw.append(n_ev / dt)

    for r in range(repeat):
        for which in ("ours", "raw") if r % 2 == 0 else ("raw", "ours"):
            (run_ours if which == "ours" else run_raw)()
        say(f"  rep {r + 1}: ours {ours[-1]:,.0f}/s  raw {raw[-1]:,.0f}/s")
    assert replay is not None
    updates = _rows(replay, "UPDATE TASKS SET STATE")
    say(
        f"  writer batches: {len(batch_sizes)} (events per batch: median {med(batch_sizes):,.0f}, "
        f"max {max(batch_sizes):,}); state updates: {updates:,} for {n_ev:,} events"
    )
    say_split(ours_split, raw_split, n_ev, "event")
    o, w = med(ours), med(raw)
    return {"events_per_s": o, "events_raw_per_s": w, "events_ratio": o / w}, batch_sizes


# --- 3. a big store: backlog, summary, ls ----------------------------------------------------------------------


def target_state(i: int, n: int) -> int:
    """How far along the lifecycle task ``i`` of ``n`` is: the oldest 10% FINISHED, then
    5% RUNNING, 60% READY, and the newest 25% still CREATED (a real backlog)."""
    f = i / n
    if f < 0.10:
        return 4
    if f < 0.15:
        return 2
    if f < 0.75:
        return 1
    return 0


def build_big(store: Store, n: int, block: int, seed: int) -> tuple[float, int]:
    """Fill ``store`` with ``n`` tasks through create_tasks and apply (chunks of 50,000)."""
    rng = random.Random(seed)
    chunk = 50_000
    ev_seq = 0
    n_events = 0
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        ops = task_ops(start, min(chunk, n - start), block, rng)
        store.create_tasks(ops)
        trans: list[Transition] = []
        ts = time.time()
        for k in range(target_state(start, n)):
            for i, op in enumerate(ops, start):
                if k < target_state(i, n):
                    ev_seq += 1
                    frm, to = LIFECYCLE[k]
                    worker = WORKERS[i % len(WORKERS)] if k else None
                    trans.append(Transition(EVENT_ID_BASE | ev_seq, op.id, frm, to, ts, 1 if k else 0, worker))
        for part in range(0, len(trans), 20_000):
            store.apply(trans[part : part + 20_000])
        n_events += len(trans)
        done = start + len(ops)
        if done % 250_000 < chunk or done == n:
            say(f"    {done:>9,} tasks, {n_events:,} transitions: {time.perf_counter() - t0:6.1f} s")
    return time.perf_counter() - t0, n_events


def bench_big(be: Backend, n: int, block: int, rounds: int, seed: int) -> dict[str, float]:
    url = be.fresh()
    store = Store(url)
    try:
        say(f"  building {n:,} tasks ...")
        build_s, n_events = build_big(store, n, block, seed)
        note = be.analyze()
        summary = store.summary()
        say(f"  built in {build_s:.1f} s ({n / build_s:,.0f} tasks/s incl. {n_events:,} transitions); {summary}")
        if note:
            say(f"  {note}")
        last_exp = f"sweep{(n - 1) // block}"
        mid = task_id(n // 2)  # in the READY part
        queries: dict[str, Callable[[], Any]] = {
            "backlog": store.backlog,
            "summary": store.summary,
            "ls_state": lambda: store.tasks(state="READY", limit=50),
            "ls_tags": lambda: store.tasks(tags={"exp": last_exp}, limit=50),
            "ls_name": lambda: store.tasks(name="x-123"),
            "ls_after": lambda: store.tasks(state="READY", limit=50, after=mid),
        }
        expect = {"ls_state": 50, "ls_tags": 50, "ls_name": 1, "ls_after": 50}
        cli = _cli_command(url)
        times: dict[str, list[float]] = {k: [] for k in [*queries, "cli_ls"]}
        for r in range(rounds):
            names = list(queries)
            names = names[r % len(names) :] + names[: r % len(names)]  # rotate the order
            for k in names:
                t0 = time.perf_counter()
                got = queries[k]()
                times[k].append(time.perf_counter() - t0)
                if k in expect and len(got) != expect[k]:
                    raise SystemExit(f"{k} returned {len(got)} rows, expected {expect[k]}")
            t0 = time.perf_counter()
            proc = subprocess.run(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            times["cli_ls"].append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cli)} failed: {proc.stderr.strip()}")
        out = {f"{k}_ms": 1000 * med(v) for k, v in times.items()}
        out["big_build_s"] = build_s
        out["big_tasks"] = float(n)
        say(f"  ls_tags asks for exp={last_exp} (the newest client.map call); ls_after pages READY after id {mid}")
        for k, fn in queries.items():
            say(f"  plan {k}: {query_plan(store, fn)}")
        return out
    finally:
        store.close()
        be.discard(url)


def query_plan(store: Store, fn: Callable[[], Any]) -> str:
    """The database's plan for the last SELECT ``fn`` runs (captured, then EXPLAINed)."""
    seen: list[tuple[str, Any]] = []

    def hook(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if sql.lstrip().upper().startswith("SELECT"):
            seen.append((sql, params))

    sa_event.listen(store.engine, "before_cursor_execute", hook)
    try:
        fn()
    finally:
        sa_event.remove(store.engine, "before_cursor_execute", hook)
    if not seen:
        return "(no SELECT seen)"
    sql, params = seen[-1]
    with store.engine.connect() as conn:
        if store.dialect == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
            return "; ".join(str(r[-1]) for r in rows)
        rows = conn.exec_driver_sql("EXPLAIN " + sql, params).all()
        return " | ".join(" ".join(str(r[0]).split()) for r in rows[:4])


def _cli_command(url: str) -> list[str]:
    exe = Path(sys.executable).with_name("balsam-dask")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "balsam_dask.cli"]
    return [*head, "--store", url, "ls", "--state", "READY", "--limit", "50"]


def python_startup_ms(rounds: int) -> float:
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        ts.append(time.perf_counter() - t0)
    return 1000 * med(ts)


# --- profiling -------------------------------------------------------------------------------------------------


def profile_ours(be: Backend, ops: list[NewTask], tasks: list[NewTask], events: list[Transition],
                 batch_sizes: list[int], top: int) -> None:  # fmt: skip
    """cProfile of create_tasks, and of store.apply over the writer's own batches (the
    writer thread does nothing else; profiling it in this thread keeps cProfile honest)."""
    url = be.fresh()
    store = Store(url)
    try:
        _ = store.session_id
        prof = cProfile.Profile()
        timed(lambda: prof.runcall(store.create_tasks, ops))
        _print_profile(f"[{be.name}] cProfile: create_tasks({len(ops):,})", prof, top)
    finally:
        store.close()
        be.discard(url)
    url = be.fresh()
    store = Store(url)
    try:
        store.create_tasks(tasks)
        batches, k = [], 0
        for size in batch_sizes:
            batches.append(events[k : k + size])
            k += size

        def apply_all() -> None:
            for b in batches:
                store.apply(b)

        prof = cProfile.Profile()
        timed(lambda: prof.runcall(apply_all))
        _print_profile(f"[{be.name}] cProfile: store.apply over the writer's {len(batches)} batches", prof, top)
    finally:
        store.close()
        be.discard(url)


def _print_profile(title: str, prof: cProfile.Profile, top: int) -> None:
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats(key).print_stats(top)
        text = buf.getvalue()
        body = text[text.find("   ncalls") :] if "   ncalls" in text else text
        say(f"\n{title}, by {key}:\n{body.rstrip()}")


# --- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="store_bench.py",
        description="Store throughput (ours vs the raw driver) and query latency on SQLite and PostgreSQL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tasks", type=int, default=200_000, help="task rows per insert run")
    p.add_argument("--events", type=int, default=400_000, help="events per writer run (4 per task)")
    p.add_argument("--big", type=int, default=1_000_000, help="tasks in the store the queries run on (0: skip)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions of each throughput run")
    p.add_argument("--latency-repeat", type=int, default=9, help="rounds of the latency queries")
    p.add_argument("--backends", default="sqlite", help="comma-separated: sqlite, postgresql")
    p.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                   help="PostgreSQL database; the run makes its own schema there and drops it")  # fmt: skip
    p.add_argument("--in-flight", type=int, default=1000, help="tasks interleaved in the event stream")
    p.add_argument("--map-size", type=int, default=0,
                   help="tasks per client.map call, sharing one TaskSpec (0: n/40, at least 1000)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=None, help="writer max_batch (default: the writer's)")
    p.add_argument("--tmpdir", default=None, help="where the SQLite files go (default: a new temp dir)")
    p.add_argument("--profile", action="store_true", help="also print cProfile of our write paths")
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in args.backends:
        if b not in ("sqlite", "postgresql"):
            p.error(f"unknown backend {b!r}; use --backends sqlite,postgresql")
    if args.tasks < 1 or args.events < 4 or args.repeat < 1 or args.big < 0 or args.in_flight < 1:
        p.error("sizes must be positive (e.g. --tasks 200000 --events 400000 --repeat 3)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load0 = os.getloadavg()
    say(
        f"store_bench: python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} cores; load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
    )
    say(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    figures: dict[str, float] = {"load_1m_start": load0[0], "load_5m_start": load0[1]}
    rng = random.Random(args.seed)

    def block(n: int) -> int:
        return args.map_size or max(1000, n // 40)

    say(f"generating workloads: {args.tasks:,} tasks; {args.events // 4:,} tasks x 4 events ...")
    insert_ops = task_ops(0, args.tasks, block(args.tasks), rng)
    ev_tasks = task_ops(0, args.events // 4, block(args.events // 4), rng)
    events = lifecycle_ops([t.id for t in ev_tasks], args.in_flight, rng)
    specs = len({id(t.spec) for t in insert_ops})
    say(f"  {specs} TaskSpecs (client.map calls) for the insert run; {len(events):,} events, "
        f"{args.in_flight} tasks in flight")  # fmt: skip

    tmp = args.tmpdir or tempfile.mkdtemp(prefix="balsam-store-bench-")
    os.makedirs(tmp, exist_ok=True)
    try:
        for name in args.backends:
            be: Backend = SQLiteBackend(tmp) if name == "sqlite" else PGBackend(args.pg_url)
            try:
                where = f"schema {be.schema}" if isinstance(be, PGBackend) else f"files in {tmp}"
                load = os.getloadavg()
                say(f"\n=== {name} ({where}); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
                # warm-up: imports, compiled-statement caches, the first Alembic run
                bench_tasks(be, insert_ops[:2000], 1, quiet=True)
                say(f"[{name}] 1. bulk task inserts: {args.tasks:,} rows, {args.repeat} interleaved reps")
                res = bench_tasks(be, insert_ops, args.repeat)
                say(f"[{name}] 2. events through the writer: {len(events):,} events, {args.repeat} interleaved reps")
                ev, batch_sizes = bench_events(be, ev_tasks, events, args.repeat, args.max_batch)
                res.update(ev)
                if args.big:
                    say(f"[{name}] 3. queries on a store of {args.big:,} tasks, {args.latency_repeat} rounds")
                    res.update(bench_big(be, args.big, block(args.big), args.latency_repeat, args.seed))
                figures.update({f"{name}_{k}": v for k, v in res.items()})
                report(name, res)
                if args.profile:
                    profile_ours(be, insert_ops, ev_tasks, events, batch_sizes, args.profile_top)
            finally:
                be.close()
        if args.big:
            figures["python_startup_ms"] = python_startup_ms(args.latency_repeat)
            say(f"\n(for the CLI figures: a bare `python -c pass` takes {figures['python_startup_ms']:.0f} ms here)")
    finally:
        if not args.tmpdir:
            shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    figures["load_1m_end"] = load1[0]
    say(f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}), flush=True)
    return 0


def report(name: str, r: dict[str, float]) -> None:
    sq = name == "sqlite"
    t_tasks = f" >= {TARGET_SQLITE_TASKS_PER_S:,}/s" if sq else ""
    t_events = f" >= {TARGET_SQLITE_EVENTS_PER_S:,}/s" if sq else ""
    ok_t = (r["tasks_per_s"] >= TARGET_SQLITE_TASKS_PER_S or not sq) and r["tasks_ratio"] >= TARGET_RATIO
    ok_e = (r["events_per_s"] >= TARGET_SQLITE_EVENTS_PER_S or not sq) and r["events_ratio"] >= TARGET_RATIO
    say(f"\n[{name}] summary (medians)")
    say(f"  task inserts   ours {fmt_rate(r['tasks_per_s'])}  raw {fmt_rate(r['tasks_raw_per_s'])}  "
        f"ratio {r['tasks_ratio']:.2f}   target{t_tasks} ratio >= {TARGET_RATIO}: {verdict(ok_t)}")  # fmt: skip
    say(f"  writer events  ours {fmt_rate(r['events_per_s'])}  raw {fmt_rate(r['events_raw_per_s'])}  "
        f"ratio {r['events_ratio']:.2f}   target{t_events} ratio >= {TARGET_RATIO}: {verdict(ok_e)}")  # fmt: skip
    if "backlog_ms" in r:
        n = int(r["big_tasks"])
        for k, label in (("backlog", "store.backlog()"), ("summary", "store.summary()")):
            ok = r[f"{k}_ms"] < TARGET_BACKLOG_MS
            say(f"  {label:<44} {r[f'{k}_ms']:9.2f} ms on {n:,} tasks   target < {TARGET_BACKLOG_MS:.0f} ms: "
                f"{verdict(ok)}")  # fmt: skip
        for k, label in (
            ("ls_state", 'tasks(state="READY", limit=50)'),
            ("ls_tags", 'tasks(tags={"exp": <newest sweep>}, limit=50)'),
            ("ls_name", 'tasks(name="x-123")'),
            ("ls_after", 'tasks(state="READY", limit=50, after=<mid id>)'),
        ):
            say(f"  {label:<44} {r[f'{k}_ms']:9.2f} ms")
        say(f"  {'balsam-dask ls --state READY --limit 50':<44} {r['cli_ls_ms']:9.2f} ms (subprocess, start included)")


if __name__ == "__main__":
    sys.exit(main())
