"""A synthetic finished run for ``report_bench.py``: tasks, their events and allocations, made
in memory and written with the raw driver (sqlite3 ``executemany``; psycopg ``COPY``).

The run: ``ALLOCS`` allocations of ``NODES_PER_ALLOC`` nodes x ``CORES`` cores (``GPUS`` GPUs)
each; tasks arrive in waves and run on the first free core (a heap of core slots), with
durations by name; ``FAIL`` of first attempts fail, half of those succeed on their retry.
Ids follow ``store/ids.py`` (session 1).
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Iterator
from typing import Any

SESSION = 1
TASK_BASE = SESSION << 40
EVENT_BASE = (SESSION << 40) | (1 << 39)
ALLOCS = 4
NODES_PER_ALLOC = 32
CORES = 32
GPUS = 4
T0 = 1_800_000_000.0
WAVE = 10_000  # tasks submitted together
WAVE_EVERY = 120.0  # seconds between waves
FAIL = 0.05
NAMES = {"simulate": 40.0, "fit": 120.0, "post": 15.0, "train": 300.0, "check": 5.0, "mesh": 60.0}
MESSAGES = ("ValueError: bad input", "RuntimeError: solver diverged", "MemoryError", "OSError: disk quota exceeded")

TASK_COLUMNS = ("id", "key", "name", "kind", "state", "priority", "nodes", "ranks_per_node", "threads_per_rank",
                "cores", "gpus", "spec", "tags", "parents", "attempt", "session_id", "kill_requested",
                "created_at", "updated_at", "state_at", "error_tail")  # fmt: skip
EVENT_COLUMNS = ("task_id", "id", "attempt", "from_state", "to_state", "ts", "since", "worker", "hosts", "message")
ALLOCATION_COLUMNS = ("id", "session_id", "system", "scheduler_id", "nodes", "walltime", "state", "submitted_at",
                      "started_at", "ended_at", "info", "updated_at")  # fmt: skip


def generate(n: int, seed: int = 1) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(task rows, event rows, allocation rows) of a finished run of ``n`` tasks."""
    rng = random.Random(seed)
    names = list(NAMES)
    slots = [(T0, s) for s in range(ALLOCS * NODES_PER_ALLOC * CORES)]
    heapq.heapify(slots)
    tasks: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    seq = 0
    entered: dict[int, float] = {}  # task -> when it entered its state (the store's state_at)

    def event(tid: int, attempt: int, frm: str, to: str, ts: float, worker: Any = None, message: Any = None) -> None:
        nonlocal seq
        seq += 1
        events.append((tid, EVENT_BASE | seq, attempt, frm, to, ts, entered.get(tid, T0), worker, None, message))
        entered[tid] = ts

    tags = json.dumps({"exp": "bench"})
    for i in range(n):
        tid = TASK_BASE | (i + 1)
        name = names[i % len(names)]
        gpus = 1 if name == "train" and i % 48 == 3 else 0
        created = T0 + (i // WAVE) * WAVE_EVERY
        entered[tid] = created
        event(tid, 0, "CREATED", "READY", created)
        ready, frm, attempt, state, tail = created, "READY", 0, "FINISHED", None
        while True:
            attempt += 1
            free, slot = heapq.heappop(slots)
            start = max(ready, free) + 0.002
            end = start + NAMES[name] * (0.5 + rng.random())
            heapq.heappush(slots, (end, slot))
            node = f"node-{slot // CORES}"
            event(tid, attempt, frm, "RUNNING", start, node)
            if attempt <= 2 and rng.random() < (FAIL if attempt == 1 else 0.5):
                tail = MESSAGES[rng.randrange(len(MESSAGES))]
                event(tid, attempt, "RUNNING", "RUN_ERROR", end, node, tail)
                if attempt == 1:
                    event(tid, attempt, "RUN_ERROR", "RESTART_READY", end, None, "retrying")
                    ready, frm = end, "RESTART_READY"
                    continue
                event(tid, attempt, "RUN_ERROR", "FAILED", end + 0.005, None, tail)
                state = "FAILED"
                break
            event(tid, attempt, "RUNNING", "RUN_DONE", end, node)
            event(tid, attempt, "RUN_DONE", "FINISHED", end + 0.005)
            tail = None
            break
        tasks.append((tid, f"{name}-{i:08x}", name, "python", state, 0, 1, 1, 1, 1, gpus, "{}", tags, "[]", attempt,
                      SESSION, False, created, events[-1][5], events[-1][5], tail))  # fmt: skip
    last = max(e[5] for e in events)
    allocs = []
    for k in range(ALLOCS):
        info = json.dumps({"cores_per_node": CORES, "gpus_per_node": GPUS})
        allocs.append((TASK_BASE | (1 << 38) | k, SESSION, "slurm", str(1000 + k), NODES_PER_ALLOC, 86400.0,
                       "FINISHED", T0 - 600.0, T0 - 60.0, last + 30.0, info, last + 30.0))  # fmt: skip
    return tasks, events, allocs


def _chunks(rows: list[tuple[Any, ...]], size: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def insert_sql(table: str, columns: tuple[str, ...], mark: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(mark for _ in columns)})"


def write_sqlite(path: str, tasks: list[Any], events: list[Any], allocs: list[Any]) -> None:
    """Append the rows to the (schema-ready) SQLite store at ``path`` with sqlite3."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        with conn:
            conn.execute("INSERT OR IGNORE INTO sessions (id, kind, host, pid, started_at, heartbeat_at, ended_at, "
                         "info) VALUES (?, 'bench', 'bench', 0, ?, ?, ?, '{}')", (SESSION, T0, T0, T0))  # fmt: skip
            for part in _chunks(tasks):
                conn.executemany(insert_sql("tasks", TASK_COLUMNS, "?"), part)
            for part in _chunks(events):
                conn.executemany(insert_sql("events", EVENT_COLUMNS, "?"), part)
            conn.executemany(insert_sql("allocations", ALLOCATION_COLUMNS, "?"), allocs)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def write_postgres(conninfo: dict[str, Any], tasks: list[Any], events: list[Any], allocs: list[Any]) -> None:
    """Append the rows to the (schema-ready) PostgreSQL store with psycopg's COPY."""
    import psycopg

    with psycopg.connect(**conninfo) as conn:
        conn.execute("INSERT INTO sessions (id, kind, host, pid, started_at, heartbeat_at, ended_at, info) "
                     "VALUES (%s, 'bench', 'bench', 0, %s, %s, %s, '{}') ON CONFLICT DO NOTHING",
                     (SESSION, T0, T0, T0))  # fmt: skip
        for table, cols, rows in (("tasks", TASK_COLUMNS, tasks), ("events", EVENT_COLUMNS, events),
                                  ("allocations", ALLOCATION_COLUMNS, allocs)):  # fmt: skip
            with conn.cursor().copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
        conn.execute("ANALYZE")
