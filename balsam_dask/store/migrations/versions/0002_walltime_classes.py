"""Shape counts by walltime class: the one rounding of estimates the placer and policy use.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa
from alembic import op

from balsam_dask.store.shapes import shape_of

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _recount(bucket: object) -> None:
    conn = op.get_bind()
    columns = "nodes, cores, gpus, walltime, state"
    rows = conn.execute(sa.text(f"SELECT {columns}, count(*) FROM tasks GROUP BY {columns}")).fetchall()
    counts: Counter[tuple[int, int, int, float, str]] = Counter()
    for nodes, cores, gpus, walltime, state, n in rows:
        shape: tuple[int, int, int, float] = bucket(nodes, cores, gpus, walltime)  # type: ignore[operator]
        key = (*shape, state)
        counts[key] += n
    conn.execute(sa.text("DELETE FROM shape_counts"))
    if counts:
        conn.execute(
            sa.text("INSERT INTO shape_counts (nodes, cores, gpus, walltime, state, count) "
                    "VALUES (:n, :c, :g, :w, :s, :k)"),
            [{"n": n, "c": c, "g": g, "w": w, "s": s, "k": k} for (n, c, g, w, s), k in counts.items()],
        )  # fmt: skip


def upgrade() -> None:
    _recount(shape_of)


def downgrade() -> None:
    # the rounding of 0001 (fixed buckets up to a day, then whole hours)
    bounds = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600, 28800, 43200, 86400)

    def old(nodes: int, cores: int, gpus: int, walltime: float | None) -> tuple[int, int, int, float]:
        if walltime is None or walltime <= 0:
            return (nodes, cores, gpus, 0.0)
        b = next((float(x) for x in bounds if walltime <= x), None)
        return (nodes, cores, gpus, b if b is not None else -(-walltime // 3600.0) * 3600.0)

    _recount(old)
