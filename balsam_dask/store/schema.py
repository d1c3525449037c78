"""Schema versions: create or upgrade a store with Alembic, refuse a newer one.

Opening a store reads ``alembic_version`` directly (cheap); Alembic itself is only
imported when a store must be created or upgraded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, text

from balsam_dask.errors import SchemaMissing, SchemaTooNew, StoreError
from balsam_dask.store.engine import write_tx

#: Every revision this version knows, oldest first. The last is the head.
REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006")
HEAD = REVISIONS[-1]
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)
_PG_LOCK_ID = 0x6261_6C73  # "bals": serializes concurrent schema creation on PostgreSQL


def current_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    return row[0] if row else None


def _check(rev: str | None, where: str) -> None:
    if rev is not None and rev not in REVISIONS:
        raise SchemaTooNew(
            f"the store at {where} has schema revision {rev!r}, which this balsam_dask does not "
            f"know (it knows {', '.join(REVISIONS)}): it was written by a newer balsam_dask. "
            "Upgrade with `pip install -U balsam-dask`, or use another store."
        )


def ensure_schema(engine: Engine, where: str, create: bool = True) -> str:
    """Make sure the store has the head schema; create or upgrade it if ``create``."""
    with engine.connect() as conn:
        rev = current_revision(conn)
    _check(rev, where)
    if rev == HEAD:
        return rev
    if not create:
        if rev is None:
            raise SchemaMissing(
                f"the store at {where} has no balsam_dask schema; create it with `balsam-dask init --store {where}`"
            )
        raise SchemaMissing(
            f"the store at {where} has schema revision {rev}, older than {HEAD}; upgrade it with "
            f"`balsam-dask init --store {where}`"
        )
    return upgrade(engine, where)


def upgrade(engine: Engine, where: str) -> str:
    """Create or upgrade to the head revision, safely against concurrent callers."""
    from alembic import command
    from alembic.config import Config

    with write_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
        rev = current_revision(conn)
        _check(rev, where)
        if rev == HEAD:
            return rev
        if rev is None and inspect(conn).has_table("tasks"):
            raise StoreError(
                f"the store at {where} has balsam_dask tables but no schema version; it was not "
                "created by balsam_dask or is damaged. Use a new store."
            )
        if rev is not None:  # shown once, before a pause that grows with the store
            log.warning("upgrading the store at %s from schema %s to %s (once; a large store takes a while)",
                        where, rev, HEAD)  # fmt: skip
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        return HEAD
