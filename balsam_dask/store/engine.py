"""Store URLs and SQLAlchemy engines: SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout; write transactions start with
``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing on a
read-to-write upgrade. A new SQLite file is created readable by its owner only (SQLite gives
its -wal and -shm files the same mode). PostgreSQL uses psycopg 3.

Read-only engines (``mode="ro"``) never write: SQLite opens the file with ``mode=ro``, or, in
a directory where the -shm file cannot be made, as an immutable snapshot (``mode="immutable"``);
PostgreSQL sessions are read-only transactions.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from balsam_dask.errors import InvalidStoreURL, SchemaMissing, StoreReadOnly, StoreUnavailable
from balsam_dask.private import open_private

DEFAULT_SQLITE_FILE = "balsam.db"
URL_EXAMPLES = "sqlite:///path/to/balsam.db or postgresql://user@host:5432/dbname"
ENV_VAR = "BALSAM_DASK_STORE"
SQLITE_BUSY_TIMEOUT_MS = 60_000
#: Engine modes: read-write, read-only, and (SQLite) an immutable snapshot.
MODES = ("rw", "ro", "immutable")


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


def _sqlite_on_connect(dbapi_conn: Any, _record: Any, writable: bool = True) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    if writable:
        _set_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def _pg_read_only(dbapi_conn: Any, _record: Any) -> None:
    with dbapi_conn.cursor() as cur:
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    dbapi_conn.commit()


def _sqlite_uri(path: str, mode: str) -> str:
    query = "immutable=1" if mode == "immutable" else "mode=ro"
    return f"file:{quote(path)}?{query}"


def _writable(p: Path) -> bool:
    """Writable here, and by its mode (root may write anything, but not what is marked read-only)."""
    return os.access(p, os.W_OK) and bool(p.stat().st_mode & 0o222)


def sqlite_write_problem(path: str) -> str | None:
    """Why this process cannot write the SQLite store at ``path`` (its file, or its directory,
    where SQLite makes the -wal and -shm files), or None. A file or directory without any
    write permission bit counts as read-only for root too."""
    db = Path(path)
    d = db.parent
    wal_ready = all(os.access(f"{db}{s}", os.W_OK) for s in ("-wal", "-shm"))
    for p, what in ((db, "the store file"), (d, "its directory")):
        if p is d and wal_ready:
            continue
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if not _writable(p):
            return f"{what} {p} is not writable (mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid})"
    return None


def sqlite_read_mode(path: str) -> str:
    """How to open the SQLite store at ``path`` read-only: "immutable" when nothing has it open
    (no -shm file), no committed change waits in a -wal file, and its directory is not
    writable here (a ``mode=ro`` connection would have to create them there); else "ro"."""
    wal = Path(f"{path}-wal")
    if os.path.exists(f"{path}-shm") or (wal.exists() and wal.stat().st_size > 0):
        return "ro"
    return "ro" if _writable(Path(path).parent) else "immutable"


def _create_sqlite_file(path: str) -> None:
    """An empty store file (an empty SQLite database) with mode 0600, unless it exists."""
    try:
        os.close(open_private(path, os.O_WRONLY | os.O_EXCL))
    except FileExistsError:
        pass


def _sqlite_on_begin(conn: Connection) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get("balsam_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


#: The oldest SQLite the store's statements run on (``UPDATE ... FROM ... RETURNING``, ``MATERIALIZED``).
MIN_SQLITE = (3, 35, 0)


def check_sqlite_version(version: tuple[int, int, int] | None = None) -> None:
    """Refuse, with one clear error, an SQLite library older than MIN_SQLITE (this Python's, by
    default): RHEL 8's system Python, for one, has 3.26."""
    have = sqlite3.sqlite_version_info if version is None else version
    if tuple(have) < MIN_SQLITE:
        need, got = ".".join(map(str, MIN_SQLITE)), ".".join(map(str, have))
        raise StoreUnavailable(
            f"this Python's SQLite is {got}; a SQLite store needs {need} or newer: use a Python built with a "
            "newer SQLite (conda's, pyenv's, python.org's) or a PostgreSQL store (--store postgresql://...)"
        )


def make_engine(url: URL, mode: str = "rw") -> Engine:
    """An engine for a normalized URL; raises StoreUnavailable if it cannot connect. ``mode``:
    "rw", or "ro" (no writes), or "immutable" (SQLite: a snapshot that takes no locks)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is invalid: use one of {', '.join(MODES)}")
    kwargs: dict[str, Any] = {}
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite:
        check_sqlite_version()
        db = url.database or ""
        parent = Path(db).parent
        if not parent.is_dir():
            raise StoreUnavailable(f"cannot open the SQLite store {url.database}: directory {parent} does not exist")
        kwargs["connect_args"] = {
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
        }
        if mode == "rw":
            try:
                _create_sqlite_file(db)
            except OSError as e:
                raise StoreUnavailable(f"cannot create the SQLite store {db}: {e.strerror or e}") from None
        else:
            uri = _sqlite_uri(db, mode)
            kwargs["creator"] = partial(sqlite3.connect, uri, uri=True, **kwargs.pop("connect_args"))
    else:
        kwargs["connect_args"] = {"connect_timeout": 10}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ImportError) as e:
        raise InvalidStoreURL(
            f"no driver for {display(url)}: {e}; install it with pip install 'balsam-dask[postgres]'"
        ) from None
    if sqlite:
        event.listen(engine, "connect", partial(_sqlite_on_connect, writable=mode == "rw"))
        event.listen(engine, "begin", _sqlite_on_begin)
    elif mode != "rw":
        event.listen(engine, "connect", _pg_read_only)
    try:
        with engine.connect() as conn:
            # a read-only SQLite connection may fail only once it reads the file
            conn.exec_driver_sql("SELECT count(*) FROM sqlite_master" if sqlite and mode != "rw" else "SELECT 1")
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


def open_engine(url: URL, where: str, *, create: bool, read_only: bool) -> tuple[Engine, bool]:
    """The store's engine, and whether it is an immutable snapshot (a read-only SQLite store in
    a directory where its -shm file cannot be made: what may be in its -wal file is not seen)."""
    sqlite = url.get_backend_name() == "sqlite"
    db = url.database or ""
    if sqlite and (not create or read_only) and not os.path.exists(db):
        raise SchemaMissing(f"there is no store at {db}; create it with `balsam-dask init --store {where}`")
    if sqlite and not read_only:
        problem = sqlite_write_problem(db)
        if problem:
            raise StoreReadOnly(
                f"cannot write the store {where}: {problem}; commands that only read it (balsam-dask ls, "
                "show, summary) open it read-only"
            )
    mode = "rw" if not read_only else sqlite_read_mode(db) if sqlite else "ro"
    try:
        engine = make_engine(url, mode)
    except StoreUnavailable:
        if mode != "ro" or not sqlite:
            raise
        mode = "immutable"  # a directory where the -shm file cannot be made: a snapshot
        engine = make_engine(url, mode)
    return engine, mode == "immutable"
