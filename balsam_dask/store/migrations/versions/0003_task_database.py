"""The task database: apps, database tasks' columns (target, parameters, staging, lease), DAG edges.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
DB_TASK_WHERE = "app IS NOT NULL OR function IS NOT NULL"
#: New columns of ``tasks``, all NULL for the tasks already there (no table rewrite).
TASK_COLUMNS = (
    ("app", sa.String(255)),
    ("app_version", sa.Integer()),
    ("function", sa.String(512)),
    ("params", JSONType),
    ("args", JSONType),
    ("input_files", JSONType),
    ("stage_in", JSONType),
    ("stage_out", JSONType),
    ("on_parent_failure", sa.String(8)),
    ("lease_owner", sa.Integer()),
    ("lease_expires", sa.Float()),
)


def upgrade() -> None:
    for name, type_ in TASK_COLUMNS:
        op.add_column("tasks", sa.Column(name, type_, nullable=True))
    op.create_index(
        "ix_tasks_db_state",
        "tasks",
        ["state", "id"],
        sqlite_where=sa.text(DB_TASK_WHERE),
        postgresql_where=sa.text(DB_TASK_WHERE),
    )
    op.create_table(
        "apps",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("command", JSONType, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("defaults", JSONType, nullable=False),
        sa.Column("hooks", JSONType, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_apps_name_version"),
    )
    op.create_table(
        "task_parents",
        sa.Column("parent_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("child_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("task_parents")
    op.drop_table("apps")
    op.drop_index("ix_tasks_db_state", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        for name, _ in reversed(TASK_COLUMNS):
            batch.drop_column(name)
