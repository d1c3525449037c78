"""SQLAlchemy 2.x models of the provenance store (DESIGN.md §3).

Ids of tasks and events are made by the writing session (``session_id << 40 | seq``,
see ``ids.py``), so bulk inserts need no round trip and a replayed batch is recognised
by its primary keys. Timestamps are float seconds since the epoch.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")
#: 64-bit ids; on SQLite exactly INTEGER, so the primary key is the table's own rowid
#: (a BIGINT key gets a second index that every insert and update pays for).
IdType = BigInteger().with_variant(Integer(), "sqlite")


#: The rows of database tasks (not a client's).
DB_TASK_WHERE = "app IS NOT NULL OR function IS NOT NULL"


class Base(DeclarativeBase):
    pass


class Session(Base):
    """A process that writes to the store: a scheduler plugin, a client, the CLI, a test."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=False)
    key: Mapped[str] = mapped_column(String(512))
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # resources; cores and gpus are per node
    nodes: Mapped[int] = mapped_column(Integer, default=1)
    ranks_per_node: Mapped[int] = mapped_column(Integer, default=1)
    threads_per_rank: Mapped[int] = mapped_column(Integer, default=1)
    cores: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    walltime: Mapped[float | None] = mapped_column(Float, nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    tags: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    parents: Mapped[list[int]] = mapped_column(JSONType, default=list)
    # the task that submitted this one (dynamic workflows), if any
    submitted_by: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    workdir: Mapped[str | None] = mapped_column(Text, nullable=True)
    return_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_tail: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    result_ref: Mapped[str | None] = mapped_column(Text, nullable=True)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    session_id: Mapped[int] = mapped_column(Integer)
    kill_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    # when the task entered its current state (the ``since`` of its next event)
    state_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Database tasks (``Store.add_tasks``, ``balsam-dask submit``): what ``serve`` runs. A
    # client's task leaves them NULL. JSON columns are NULL when empty.
    app: Mapped[str | None] = mapped_column(String(255), nullable=True)
    app_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    function: Mapped[str | None] = mapped_column(String(512), nullable=True)  # import path pkg.mod:fn
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    args: Mapped[list[Any] | None] = mapped_column(JSONType, nullable=True)
    input_files: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    stage_in: Mapped[list[dict[str, str]] | None] = mapped_column(JSONType, nullable=True)
    stage_out: Mapped[list[dict[str, str]] | None] = mapped_column(JSONType, nullable=True)
    on_parent_failure: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # the session of the service that claimed the task, until lease_expires (epoch seconds)
    lease_owner: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        # Few indexes on purpose: each costs bulk-insert speed (a random-key index on
        # ``key`` halved it). Lookups by key or time range scan; kill polling uses a
        # partial index that stays tiny.
        Index("ix_tasks_state_id", "state", "id"),
        # the database tasks by state: the queue a service claims from (client tasks stay out)
        Index(
            "ix_tasks_db_state",
            "state",
            "id",
            sqlite_where=text(DB_TASK_WHERE),
            postgresql_where=text(DB_TASK_WHERE),
        ),
        Index("ix_tasks_name", "name"),
        Index(
            "ix_tasks_kill",
            "session_id",
            sqlite_where=text("kill_requested"),
            postgresql_where=text("kill_requested"),
        ),
    )


class Event(Base):
    """One state change of one task: the provenance log. Clustered by task (a task's
    history is one range of the primary key; SQLite keeps no separate rowid b-tree)."""

    __tablename__ = "events"

    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    ts: Mapped[float] = mapped_column(Float)
    # when the task entered ``from_state``: a run is the event leaving RUNNING (``since`` to ``ts``)
    since: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    hosts: Mapped[str | None] = mapped_column(Text, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = ({"sqlite_with_rowid": False},)


class Allocation(Base):
    """A batch job (or a local emulated allocation) that provides nodes."""

    __tablename__ = "allocations"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=False)
    session_id: Mapped[int] = mapped_column(Integer)
    system: Mapped[str] = mapped_column(String(32))
    scheduler_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    queue: Mapped[str | None] = mapped_column(String(64), nullable=True)
    account: Mapped[str | None] = mapped_column(String(64), nullable=True)
    nodes: Mapped[int] = mapped_column(Integer)
    walltime: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))
    submitted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_allocations_state", "state"),)


class ShapeCount(Base):
    """Tasks per (resource shape, state): kept in step with ``tasks`` in the same
    transactions, so the backlog summary costs O(shapes), not O(tasks)."""

    __tablename__ = "shape_counts"

    nodes: Mapped[int] = mapped_column(Integer, primary_key=True)
    cores: Mapped[int] = mapped_column(Integer, primary_key=True)
    gpus: Mapped[int] = mapped_column(Integer, primary_key=True)
    # walltime estimate rounded up to a bucket (seconds); 0 = no estimate
    walltime: Mapped[float] = mapped_column(Float, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class App(Base):
    """A named, versioned command template with defaults and hooks (``balsam-dask app add``)."""

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    command: Mapped[Any] = mapped_column(JSONType, nullable=False)  # a template string or an argv list
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    defaults: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    hooks: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("name", "version", name="uq_apps_name_version"),)


class TaskParent(Base):
    """One edge of a database task's DAG, clustered by parent: a parent's children are one
    range of the key (a child's parents are its ``parents`` column)."""

    __tablename__ = "task_parents"

    parent_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    child_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)

    __table_args__ = ({"sqlite_with_rowid": False},)


class TransferRow(Base):
    """One stage-in or stage-out item of a database task as it ran (``taskdb.job.Transfer``)."""

    __tablename__ = "transfers"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(BigInteger)
    direction: Mapped[str] = mapped_column(String(3))  # "in" | "out"
    src: Mapped[str] = mapped_column(Text)
    dest: Mapped[str] = mapped_column(Text)
    transport: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started: Mapped[float] = mapped_column(Float)
    ended: Mapped[float] = mapped_column(Float)
    nbytes: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_transfers_task_id", "task_id"),)


class NodeBusy(Base):
    """A stretch of time in which a node (a worker) was busy: ``store/busy.py`` keeps them as
    runs end, so reports need not order every run of every node."""

    __tablename__ = "node_busy"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    worker: Mapped[str] = mapped_column(String(255))
    started: Mapped[float] = mapped_column(Float)
    ended: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_node_busy_worker_ended", "worker", "ended"),)


tasks_t = cast(Table, Task.__table__)
events_t = cast(Table, Event.__table__)
allocations_t = cast(Table, Allocation.__table__)
sessions_t = cast(Table, Session.__table__)
shape_counts_t = cast(Table, ShapeCount.__table__)
apps_t = cast(Table, App.__table__)
task_parents_t = cast(Table, TaskParent.__table__)
transfers_t = cast(Table, TransferRow.__table__)
node_busy_t = cast(Table, NodeBusy.__table__)
