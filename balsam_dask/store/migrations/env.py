"""Alembic environment: always run with a connection handed over by balsam_dask."""

from __future__ import annotations

from alembic import context

from balsam_dask.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("balsam_dask migrations run through balsam_dask.store.schema.upgrade()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
