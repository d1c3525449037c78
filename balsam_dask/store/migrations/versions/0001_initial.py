"""Initial schema: sessions, tasks, events, allocations, shape_counts.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("info", JSONType, nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("id", IdType, primary_key=True, autoincrement=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("ranks_per_node", sa.Integer(), nullable=False),
        sa.Column("threads_per_rank", sa.Integer(), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("walltime", sa.Float(), nullable=True),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("tags", JSONType, nullable=False),
        sa.Column("parents", JSONType, nullable=False),
        sa.Column("submitted_by", sa.BigInteger(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("workdir", sa.Text(), nullable=True),
        sa.Column("return_code", sa.Integer(), nullable=True),
        sa.Column("error_tail", sa.Text(), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("result_ref", sa.Text(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("kill_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_tasks_state_id", "tasks", ["state", "id"])
    op.create_index("ix_tasks_name", "tasks", ["name"])
    op.create_index(
        "ix_tasks_kill",
        "tasks",
        ["session_id"],
        sqlite_where=sa.text("kill_requested"),
        postgresql_where=sa.text("kill_requested"),
    )
    op.create_table(
        "events",
        sa.Column("task_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("hosts", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "allocations",
        sa.Column("id", IdType, primary_key=True, autoincrement=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("system", sa.String(32), nullable=False),
        sa.Column("scheduler_id", sa.String(255), nullable=True),
        sa.Column("queue", sa.String(64), nullable=True),
        sa.Column("account", sa.String(64), nullable=True),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("walltime", sa.Float(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("submitted_at", sa.Float(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("info", JSONType, nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_allocations_state", "allocations", ["state"])
    op.create_table(
        "shape_counts",
        sa.Column("nodes", sa.Integer(), primary_key=True),
        sa.Column("cores", sa.Integer(), primary_key=True),
        sa.Column("gpus", sa.Integer(), primary_key=True),
        sa.Column("walltime", sa.Float(), primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for table in ("shape_counts", "allocations", "events", "tasks", "sessions"):
        op.drop_table(table)
