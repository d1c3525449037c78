"""Where a task's program is: a path checked, or a name found on PATH, remembered like a shell's
hash table (a search walks the directories of PATH: 12 stat calls for ``true`` here, most of what
resolving a name cost)."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import NamedTuple

from balsam_dask.errors import InvalidSpec

FOUND_MAX = 256


#: Seconds between two looks at the directories before a remembered program's (a program added
#: to one of them is used within this time; looking costs a stat call per directory).
RECHECK = 1.0


class Found(NamedTuple):
    """A program found on PATH, the PATH directories before its own with their modification
    times then (a program added to one of them since would be found first), and when they were
    last looked at (``time.monotonic``)."""

    path: str
    before: tuple[tuple[str, int | None], ...]
    checked: float


#: Programs found on PATH: (name, PATH) -> Found, at most FOUND_MAX.
_FOUND: dict[tuple[str, str], Found] = {}


def _mtime(d: str) -> int | None:
    try:
        return os.stat(d).st_mtime_ns
    except OSError:
        return None


def _found(found: str, dirs: list[str]) -> Found | None:
    """What to remember of a program found in one of ``dirs`` (absolute)."""
    home = os.path.normpath(os.path.dirname(found))
    before: list[tuple[str, int | None]] = []
    for d in dirs:
        if os.path.normpath(d) == home:
            return Found(found, tuple(before), time.monotonic())
        before.append((d, _mtime(d)))
    return None


def resolve_executable(program: str, workdir: Path, path: str | None) -> str:
    """Where ``program`` will be found when started in ``workdir`` with ``PATH=path``.

    A name with a slash is taken relative to ``workdir`` (as :class:`subprocess.Popen`
    does with ``cwd``); a bare name is searched on ``path`` (a relative directory on it is taken in
    ``workdir``), and what was found is used again while it is still executable and no directory
    before its own on ``path`` has changed (looked at every RECHECK seconds; only for a ``path``
    without relative directories).
    """
    if "/" in program:
        candidate = Path(program) if os.path.isabs(program) else workdir / program
        try:
            is_file = stat.S_ISREG(os.stat(candidate).st_mode)
        except OSError:
            is_file = False
        if is_file and os.access(candidate, os.X_OK):
            return str(candidate)
        if not candidate.exists():
            why = "does not exist"
        elif not candidate.is_file():
            why = "is not a file"
        else:
            why = f"is not executable (chmod +x {candidate})"
        raise InvalidSpec(
            f"executable {program!r} {why} (looked for {candidate}); give the path of an "
            "existing program, absolute or relative to the task's workdir, e.g. './sim' or "
            "'/usr/bin/env'"
        )
    key = (program, path or "")
    known = _FOUND.get(key)
    if known is not None and os.access(known.path, os.X_OK):
        now = time.monotonic()
        if now - known.checked < RECHECK:
            return known.path
        if all(_mtime(d) == t for d, t in known.before):
            _FOUND[key] = known._replace(checked=now)
            return known.path
    dirs = (path if path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep)
    relative = not all(os.path.isabs(d) for d in dirs)
    if relative:  # such a directory is the task's, as for a shell started in its workdir
        dirs = [d if os.path.isabs(d) else str(workdir / d) for d in dirs]
    found = shutil.which(program, path=os.pathsep.join(dirs))
    if found is None:
        raise InvalidSpec(
            f"executable {program!r} not found on PATH={path!r}; give its absolute path or put "
            "its directory on PATH, e.g. env={'PATH': '/opt/app/bin:' + os.environ['PATH']}"
        )
    remembered = None if relative else _found(found, dirs)  # with a task's own directories: searched each time
    if remembered is not None:
        if len(_FOUND) >= FOUND_MAX:
            _FOUND.clear()
        _FOUND[key] = remembered
    return found
