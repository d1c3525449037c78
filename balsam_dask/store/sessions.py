"""Sessions: each process that writes the store (a scheduler, its writer, the CLI) opens one;
a session that ended, stopped heart-beating or whose process is gone is dead, and its
unfinished tasks may be resumed by another."""

from __future__ import annotations

import os
import socket
import time

from sqlalchemy import Connection

from balsam_dask.store.models import sessions_t
from balsam_dask.store.ops import SessionRecord

#: A session that has not written a heartbeat for this long is presumed dead.
SESSION_STALE_AFTER = 120.0


def open_session(conn: Connection, kind: str) -> int:
    """Insert a session for this process; its id."""
    now = time.time()
    res = conn.execute(sessions_t.insert().values(kind=kind, host=socket.gethostname(), pid=os.getpid(),
                                                  started_at=now, heartbeat_at=now, info={}))  # fmt: skip
    pk = res.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def is_dead(session: SessionRecord, stale_after: float = SESSION_STALE_AFTER) -> bool:
    if session.ended_at is not None or time.time() - session.heartbeat_at > stale_after:
        return True
    return session.host == socket.gethostname() and not pid_alive(session.pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is alive (a zombie is not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
