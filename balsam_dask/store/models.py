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
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")
#: 64-bit ids; on SQLite exactly INTEGER, so the primary key is the table's own rowid
#: (a BIGINT key gets a second index that every insert and update pays for).
IdType = BigInteger().with_variant(Integer(), "sqlite")


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

    __table_args__ = (
        # Few indexes on purpose: each costs bulk-insert speed (a random-key index on
        # ``key`` halved it). Lookups by key or time range scan; kill polling uses a
        # partial index that stays tiny.
        Index("ix_tasks_state_id", "state", "id"),
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


tasks_t = cast(Table, Task.__table__)
events_t = cast(Table, Event.__table__)
allocations_t = cast(Table, Allocation.__table__)
sessions_t = cast(Table, Session.__table__)
shape_counts_t = cast(Table, ShapeCount.__table__)
