"""Data staging of database tasks on their node: parents' input files, stage-in, stage-out.

A :class:`Transport` moves one item: ``fetch(src, dest)`` brings ``src`` (a location as
``taskdb.fields.location`` accepts it) to the local path ``dest``; ``push(src, dest)`` sends
the local file or directory ``src`` to ``dest`` (a ``dest`` ending in '/' is a directory to
put it in). Both return the bytes moved. The transport is chosen by the location's form
(``taskdb.fields.location_form``): a local path or ``file://`` URL: ``copy``; ``host:path``
and ``rsync://``: ``rsync``; ``scp://[user@]host[:port]/path``: ``scp``; another scheme: the
transport registered for it (:func:`register_transport`, e.g. in a worker preload or a
``pre`` hook). Each item is tried up to ``retries`` extra times and leaves a
:class:`~balsam_dask.taskdb.job.Transfer` record; a failed item raises
:class:`~balsam_dask.errors.StagingError` carrying every record so far.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from balsam_dask import validate
from balsam_dask.errors import StagingError, TransportUnavailable
from balsam_dask.taskdb.fields import location_form, relative_path
from balsam_dask.taskdb.job import Transfer

#: Seconds before the first retry of a failed transfer (doubling after each).
RETRY_DELAY = 0.2
#: Seconds a transfer command may run.
COMMAND_TIMEOUT = 3600.0


@runtime_checkable
class Transport(Protocol):
    """How data moves between a location and this node. ``name`` labels the transfer records."""

    name: str

    def fetch(self, src: str, dest: Path) -> int:
        """Bring ``src`` (a file or directory) to the local path ``dest``; the bytes moved."""
        ...

    def push(self, src: Path, dest: str) -> int:
        """Send the local ``src`` to ``dest`` (into it when it ends with '/'); the bytes moved."""
        ...


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def copy_path(src: Path, dest: Path) -> int:
    """Copy a file or directory (symlinks kept as links) to ``dest``, replacing what is there."""
    if not os.path.lexists(src):
        raise FileNotFoundError(f"{src} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clear(dest)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True)
    else:
        shutil.copy2(src, dest)
    return size_of(dest)


class CopyTransport:
    """Local paths and ``file://`` URLs (a shared file system): files and directories."""

    name = "copy"

    @staticmethod
    def local(location: str) -> Path:
        form, rest = location_form(location)
        if form == "local":
            return Path(location).expanduser()
        host, _, path = rest.partition("/")
        if form != "file" or host not in ("", "localhost"):
            raise ValueError(f"{location!r} is not a local path or a file:///path URL")
        return Path("/" + urllib.parse.unquote(path))

    def fetch(self, src: str, dest: Path) -> int:
        return copy_path(self.local(src), dest)

    def push(self, src: Path, dest: str) -> int:
        target = self.local(dest)
        if dest.endswith("/") or target.is_dir():
            target = target / src.name
        return copy_path(src, target)


class CommandTransport:
    """A transport running a command (``program``) per transfer: the base of rsync and scp.
    ``options`` go first on every command line (``ScpTransport(options=["-F", "~/.ssh/dtn"])``:
    a site's own ssh configuration; ``RsyncTransport(options=["-e", "ssh -F ~/.ssh/dtn"])``)."""

    name = "command"

    def __init__(self, program: str, timeout: float = COMMAND_TIMEOUT, options: Sequence[str] = ()) -> None:
        opts = list(options) if isinstance(options, (list, tuple)) else None
        if opts is None or not all(isinstance(o, str) for o in opts):
            raise validate.invalid("options", options, "a list of command-line arguments",
                                   "ScpTransport(options=['-F', '/home/me/.ssh/dtn_config'])")  # fmt: skip
        self.program = program
        self.timeout = timeout
        self.options = tuple(os.path.expanduser(o) if o.startswith("~/") else o for o in opts)

    def run(self, args: list[str]) -> None:
        exe = shutil.which(self.program)
        if exe is None:
            raise TransportUnavailable(
                f"the {self.name} transport needs the {self.program!r} command, which is not on this node's PATH "
                f"({os.environ.get('PATH', '')}): install it, or register another transport with "
                f"balsam_dask.worker.staging.register_transport"
            )
        argv = [exe, *args]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited with code {res.returncode}: {res.stderr.strip()[-500:]}")

    def remote(self, location: str) -> tuple[list[str], str]:
        """The command's options and its spelling of ``location``."""
        return [], location

    def fetch(self, src: str, dest: Path) -> int:
        """Fetched into a fresh directory beside ``dest``, then moved: a file and a directory
        land the same way, whatever the command does with a destination that exists."""
        opts, where = self.remote(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=dest.parent))
        try:
            self.run([*self.options, *opts, where, f"{tmp}/"])
            entries = list(tmp.iterdir())
            got = entries[0] if len(entries) == 1 and not src.endswith("/") else tmp
            _clear(dest)
            os.replace(got, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return size_of(dest)

    def push(self, src: Path, dest: str) -> int:
        opts, where = self.remote(dest)
        self.run([*self.options, *opts, str(src), where])
        return size_of(src)


class RsyncTransport(CommandTransport):
    """``host:path`` (over ssh) and ``rsync://host/module/path`` (an rsync daemon), with ``rsync -a``."""

    name = "rsync"

    def __init__(self, program: str = "rsync", timeout: float = COMMAND_TIMEOUT, options: Sequence[str] = ()) -> None:
        super().__init__(program, timeout, options)

    def remote(self, location: str) -> tuple[list[str], str]:
        return ["-a"], location


class ScpTransport(CommandTransport):
    """``scp://[user@]host[:port]/path``, with ``scp -r`` in batch mode (no password prompt)."""

    name = "scp"

    def __init__(self, program: str = "scp", timeout: float = COMMAND_TIMEOUT, options: Sequence[str] = ()) -> None:
        super().__init__(program, timeout, options)

    def remote(self, location: str) -> tuple[list[str], str]:
        u = urllib.parse.urlsplit(location)
        if not u.hostname:
            raise ValueError(f"{location!r} names no host: give scp://host/path")
        user = f"{u.username}@" if u.username else ""
        opts = ["-B", "-q", "-r", *(["-P", str(u.port)] if u.port else [])]
        return opts, f"{user}{u.hostname}:{urllib.parse.unquote(u.path)}"


_TRANSPORTS: dict[str, Transport] = {"copy": CopyTransport(), "rsync": RsyncTransport(), "scp": ScpTransport()}
#: Which built-in transport a location form uses when none is registered under the form itself.
_FORMS = {"local": "copy", "file": "copy", "host": "rsync", "rsync": "rsync", "scp": "scp"}


def register_transport(scheme_or_name: str, transport: Transport) -> None:
    """Use ``transport`` for locations of this URL scheme (``register_transport("globus", T)``
    for ``globus://...``), or in place of a built-in (``copy``, ``rsync``, ``scp``), in this
    worker process."""
    if not isinstance(scheme_or_name, str) or not scheme_or_name.isidentifier():
        raise validate.invalid("scheme_or_name", scheme_or_name, "a URL scheme or a transport's name",
                               "register_transport('globus', GlobusTransport())")  # fmt: skip
    if not isinstance(transport, Transport):
        raise validate.invalid("transport", transport, "an object with name, fetch(src, dest) and push(src, dest)",
                               "register_transport('copy', staging.CopyTransport())")  # fmt: skip
    _TRANSPORTS[scheme_or_name.lower()] = transport


def transport_for(location: str) -> Transport:
    """The transport that reaches ``location``, chosen by its form."""
    form = location_form(location)[0]
    found = _TRANSPORTS.get(form) or _TRANSPORTS.get(_FORMS.get(form, ""))
    if found is None:
        raise TransportUnavailable(
            f"no transport for {location!r} (scheme {form!r}) on this node: register one with "
            f"balsam_dask.worker.staging.register_transport({form!r}, transport)"
        )
    return found


class _NoRetry(Exception):
    pass


def _transfer(direction: str, src: str, dest: str, name: str, move: Callable[[], int], retries: int,
              records: list[Transfer]) -> None:  # fmt: skip
    """Run ``move`` up to ``retries`` + 1 times; record the outcome; raise StagingError on failure."""
    started, attempts, error = time.time(), 0, ""
    while True:
        attempts += 1
        try:
            nbytes = move()
        except (_NoRetry, TransportUnavailable) as e:
            error = str(e)
            break
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            if attempts > retries:
                break
            time.sleep(RETRY_DELAY * 2 ** (attempts - 1))
        else:
            records.append(Transfer(direction, src, dest, name, attempts, True, None, started, time.time(), nbytes))
            return
    records.append(Transfer(direction, src, dest, name, attempts, False, error, started, time.time(), 0))
    which = "stage-in" if direction == "in" else "stage-out"
    raise StagingError(f"{which} of {src} to {dest} failed after {attempts} attempt(s): {error}", tuple(records))


def stage_in(items: Iterable[Mapping[str, str]], workdir: Path, retries: int, records: list[Transfer]) -> None:
    """Bring each ``{src, dest}`` item to ``workdir / dest``."""
    for item in items:
        src, dest = item["src"], item["dest"]
        try:
            target = workdir / relative_path("stage_in.dest", dest, "stage_in=[{'src': '/data/x', 'dest': 'x'}]")
            transport = transport_for(src)
        except Exception as e:
            _transfer("in", src, dest, "-", _raiser(e), retries, records)
        else:
            fetch = functools.partial(transport.fetch, src, target)
            _transfer("in", src, str(target), transport.name, fetch, retries, records)


def stage_out(items: Iterable[Mapping[str, str]], workdir: Path, retries: int, records: list[Transfer]) -> None:
    """Send the files of ``workdir`` matching each item's ``src`` glob to its ``dest``."""
    for item in items:
        pattern, dest = item["src"], item["dest"]
        matches = sorted(workdir.glob(pattern))
        try:
            transport = transport_for(dest)
        except Exception as e:
            _transfer("out", str(workdir / pattern), dest, "-", _raiser(e), retries, records)
            continue
        if not matches:
            err = _NoRetry(f"{pattern!r} matches no file in {workdir}")
            _transfer("out", str(workdir / pattern), dest, transport.name, _raiser(err), retries, records)
            continue

        def push_all(matches: list[Path] = matches, dest: str = dest, transport: Transport = transport) -> int:
            return sum(transport.push(m, dest if len(matches) == 1 else _dir(dest)) for m in matches)

        _transfer("out", str(workdir / pattern), dest, transport.name, push_all, retries, records)


def _dir(dest: str) -> str:
    """Several files go into ``dest`` as a directory."""
    return dest if dest.endswith("/") else dest + "/"


def _raiser(e: BaseException) -> Callable[[], int]:
    def fail() -> int:
        raise _NoRetry(str(e)) from e

    return fail


def bring_inputs(inputs: Iterable[tuple[int, str, str]], workdir: Path, mode: str) -> None:
    """Each parent's files matching its glob, linked (``link``) or copied (``copy``) into
    ``workdir`` at the same relative path. A glob matching nothing is an error naming it."""
    if mode not in ("link", "copy"):
        raise validate.invalid("input_mode", mode, "link or copy", "input_mode='copy'")
    for parent_id, parent_dir, pattern in inputs:
        root = Path(parent_dir)
        matches = sorted(root.glob(pattern))
        if not matches:
            raise StagingError(f"input_files: {pattern!r} matches no file of parent task {parent_id} (in {root})")
        for m in matches:
            dest = workdir / m.relative_to(root)
            if mode == "copy":
                copy_path(m, dest)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _clear(dest)
            os.symlink(m.absolute(), dest)
