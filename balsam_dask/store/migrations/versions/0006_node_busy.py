"""Nodes' busy stretches (``node_busy``), kept by the writer as runs end, so a report reads a
few stretches per node instead of ordering every run; filled here from the runs already stored.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from balsam_dask.store.busy import rebuild

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "node_busy",
        sa.Column("id", IdType, primary_key=True, autoincrement=True),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("started", sa.Float(), nullable=False),
        sa.Column("ended", sa.Float(), nullable=False),
    )
    op.create_index("ix_node_busy_worker_ended", "node_busy", ["worker", "ended"])
    rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_node_busy_worker_ended", table_name="node_busy")
    op.drop_table("node_busy")
