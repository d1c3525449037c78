"""State times: each event records when its task entered the state it leaves (``since``), each
task when it entered its current state (``state_at``), and an event that leaves RUNNING names
the worker of the run it ends. A run is then one event (start ``since``, end ``ts``, worker), a
run delay another (``ts - since`` of the event that enters RUNNING): reports read them without
pairing events.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("since", sa.Float(), nullable=True))
    op.add_column("tasks", sa.Column("state_at", sa.Float(), nullable=True))
    conn = op.get_bind()
    # the events already there: each one's predecessor in its task's history (time order)
    conn.execute(sa.text(
        "CREATE TEMPORARY TABLE bd_since AS SELECT task_id, id, "
        "LAG(ts) OVER (PARTITION BY task_id ORDER BY ts, id) AS since, "
        "LAG(CASE WHEN to_state = 'RUNNING' THEN worker END) OVER (PARTITION BY task_id ORDER BY ts, id) "
        "AS prev_worker FROM events"
    ))  # fmt: skip
    conn.execute(sa.text(
        "UPDATE events SET since = s.since, worker = CASE WHEN events.from_state = 'RUNNING' "
        "THEN COALESCE(events.worker, s.prev_worker) ELSE events.worker END "
        "FROM bd_since s WHERE s.task_id = events.task_id AND s.id = events.id AND s.since IS NOT NULL"
    ))  # fmt: skip
    conn.execute(sa.text("DROP TABLE bd_since"))
    conn.execute(sa.text(
        "UPDATE tasks SET state_at = COALESCE((SELECT MAX(e.ts) FROM events e WHERE e.task_id = tasks.id), created_at)"
    ))  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("state_at")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("since")
