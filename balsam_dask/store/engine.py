"""Store URLs and SQLAlchemy engines: SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout; write transactions start with
``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing on a
read-to-write upgrade. PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from balsam_dask.errors import InvalidStoreURL, StoreUnavailable

DEFAULT_SQLITE_FILE = "balsam.db"
URL_EXAMPLES = "sqlite:///path/to/balsam.db or postgresql://user@host:5432/dbname"
ENV_VAR = "BALSAM_DASK_STORE"
SQLITE_BUSY_TIMEOUT_MS = 60_000


def normalize_url(url: str | URL) -> URL:
    """Validate a store URL and return it in the form the engine uses.

    Bare paths mean SQLite files; ``postgresql://`` means psycopg 3.
    """
    if isinstance(url, URL):
        parsed = url
    else:
        if not isinstance(url, str) or not url.strip():
            raise InvalidStoreURL(f"store URL {url!r} is empty or not a string; use {URL_EXAMPLES}")
        text = url.strip()
        if "://" not in text:
            if ":" in text.split("/")[0] and not text.startswith("/"):
                raise InvalidStoreURL(f"store URL {text!r} is malformed; use {URL_EXAMPLES}")
            text = "sqlite:///" + str(Path(text).expanduser().absolute())
        try:
            parsed = make_url(text)
        except (ArgumentError, ValueError) as e:
            raise InvalidStoreURL(f"store URL {text!r} is malformed ({e}); use {URL_EXAMPLES}") from None
    # from the name, not get_driver_name(): that loads the dialect, and fails on an unknown one
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        db = parsed.database
        if not db or db == ":memory:" or db.startswith("file::memory"):
            raise InvalidStoreURL(
                f"store URL {parsed.render_as_string()!r} is an in-memory SQLite database, which "
                f"cannot be shared by the scheduler and other processes; use a file, e.g. "
                f"sqlite:///{Path(DEFAULT_SQLITE_FILE).absolute()}"
            )
        path = Path(db).expanduser()
        if not path.is_absolute():
            path = path.absolute()
        return parsed.set(drivername="sqlite+pysqlite", database=str(path))
    if backend in ("postgresql", "postgres"):
        if driver not in ("psycopg", "psycopg2", ""):
            raise InvalidStoreURL(f"store URL driver {driver!r} is not supported; use postgresql+psycopg://...")
        if not parsed.database:
            raise InvalidStoreURL(
                f"store URL {parsed.render_as_string()!r} names no database; use postgresql://user@host:5432/dbname"
            )
        return parsed.set(drivername="postgresql+psycopg")
    raise InvalidStoreURL(
        f"store URL {parsed.render_as_string()!r} uses {backend!r}, which is not supported; use {URL_EXAMPLES}"
    )


def resolve_url(url: str | URL | None) -> URL:
    """The store URL from the argument, $BALSAM_DASK_STORE, Dask config, or ./balsam.db."""
    if url is None:
        url = os.environ.get(ENV_VAR) or None
    if url is None:
        import dask.config

        url = dask.config.get("balsam-dask.store", None)
    if url is None:
        url = DEFAULT_SQLITE_FILE
    return normalize_url(url)


def display(url: URL) -> str:
    """The URL for messages: no password, no driver name."""
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)


def _set_wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out other connections: while another one turns a
    new file to WAL, SQLite answers "database is locked" at once, without its busy handler
    (seen with 8 threads opening one new store: 7 rounds in 60 failed)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _set_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get("balsam_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: URL) -> Engine:
    """An engine for a normalized URL; raises StoreUnavailable if it cannot connect."""
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        parent = Path(url.database or "").parent
        if not parent.is_dir():
            raise StoreUnavailable(f"cannot open the SQLite store {url.database}: directory {parent} does not exist")
        kwargs["connect_args"] = {
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
        }
    else:
        kwargs["connect_args"] = {"connect_timeout": 10}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ImportError) as e:
        raise InvalidStoreURL(
            f"no driver for {display(url)}: {e}; install it with pip install 'balsam-dask[postgres]'"
        ) from None
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except (OperationalError, DBAPIError) as e:
        engine.dispose()
        reason = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(e) else type(e).__name__
        raise StoreUnavailable(f"cannot reach the store at {display(url)}: {reason}") from None
    return engine


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction (SQLite: BEGIN IMMEDIATE, so writers queue on the lock)."""
    with engine.connect() as conn:
        conn.execution_options(balsam_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn, conn.begin():
        yield conn


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: lost connections, locks, server restarts."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, OperationalError):
            return True
        text = str(exc).lower()
        return any(s in text for s in ("database is locked", "connection", "terminat", "server closed", "deadlock"))
    return isinstance(exc, (ConnectionError, TimeoutError))
