"""Files and directories readable by their owner only (0600 / 0700), whatever the umask.

Work directories, result files, the SQLite store and its key hold a user's data and pickles
that balsam_dask loads again. The process umask is left alone (threads share it): each path
is created with an explicit mode. A umask can only take bits away, so the mode is checked
after creation and set exactly when the umask took too much (the owner's own bits).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory, creating it and its missing parents with mode 0700. A
    directory that already exists is left as it is (a ``workdir=`` the user chose)."""
    try:  # the common case, one call: a new task's directory in an existing root
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{path} exists and is not a directory") from None
    except FileNotFoundError:  # parents are missing too
        _make_parents(Path(path))
    else:
        _own_mode(path)
    return path if isinstance(path, Path) else Path(path)


def _make_parents(path: Path) -> None:
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:  # made meanwhile (another task, another worker)
            continue
        _own_mode(d)
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{path} exists and is not a directory")


def _own_mode(path: str | os.PathLike[str]) -> None:
    """Mode 0700 on a directory just made, if the umask took some of the owner's bits."""
    if stat.S_IMODE(os.stat(path).st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` of a file created (or truncated) with mode 0600, never through a symlink."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it), mode 0600."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        with os.fdopen(fd, "wb", closefd=True) as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
