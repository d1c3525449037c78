"""The impure side of launcher detection: ask the system, then call the pure code.

:func:`mpiexec_flavour` runs ``<path> --version`` once per path (cached) and
:func:`parse_version` (pure) reads the answer. :func:`default_launcher` feeds
``os.environ``, :func:`which` and :func:`mpiexec_flavour` to
:func:`~balsam_dask.mpi_tasks.launchers.resolve_launcher`.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping

from balsam_dask.mpi_tasks.launchers import Launcher, get_launcher, resolve_launcher

VERSION_TIMEOUT = 10.0
#: Seconds a detected launcher is reused for the same request and environment (detection
#: searches PATH several times: ~0.17 ms, against ~6 ms for a whole 2-rank launch); a
#: launcher installed meanwhile is found at the next detection.
DETECT_TTL = 30.0
#: What detection reads from the environment (see ``detect_launcher``).
_DETECT_ENV = ("PATH", "SLURM_JOB_ID", "SLURM_JOBID", "LSB_JOBID")
_detected: dict[tuple[object, ...], tuple[float, Launcher]] = {}


def parse_version(text: str) -> str | None:
    """The flavour named by an ``mpiexec --version`` output, or None if unknown.

    Hydra prints "HYDRA build details"; Open MPI prints "mpirun (Open MPI) 4.1.4"
    (5.x runs on PRRTE); HPE's PALS names itself.
    """
    t = text.lower()
    if "open mpi" in t or "openrte" in t or "prrte" in t:
        return "openmpi"
    if "pals" in t:
        return "pals"
    if "hydra" in t or "mpich" in t:
        return "mpich"
    return None


@functools.cache
def mpiexec_flavour(path: str) -> str | None:
    """The flavour of the ``mpiexec``/``mpirun`` at ``path`` (runs it once per path)."""
    if "/pals/" in os.path.realpath(path):  # HPE installs PALS under /opt/cray/pals/<v>/
        return "pals"
    try:
        out = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=VERSION_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(out.stdout + out.stderr)


def library_flavour(path: str, head: bytes = b"") -> str | None:
    """The MPI flavour of the library at ``path`` (pure: from its name and, when the name does
    not tell, ``head``: bytes of the file holding its version strings)."""
    low = path.lower()
    if "openmpi" in low or "open-mpi" in low or os.path.basename(low).startswith("libmpi.so.40"):
        return "openmpi"
    if "libmpich" in low or "/mpich" in low:
        return "mpich"
    if b"Open MPI" in head:
        return "openmpi"
    if b"MPICH" in head:
        return "mpich"
    return None


@functools.cache
def linked_mpi(program: str) -> tuple[str, str] | None:
    """``(flavour, library path)`` of the MPI library ``program`` links (``ldd``), if any."""
    try:
        out = subprocess.run(["ldd", program], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
                             stdin=subprocess.DEVNULL, check=False).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if not name.startswith(("libmpi.so", "libmpich.so")):
            continue
        lib = rest.split(" (")[0].strip()
        where = os.path.realpath(lib) if lib else name
        flavour = library_flavour(where)
        if flavour is None and lib:  # the name does not tell: its version strings do
            try:
                with open(lib, "rb") as f:
                    flavour = library_flavour(where, f.read(64 << 20))
            except OSError:
                pass
        return (flavour, lib) if flavour else None
    return None


def mismatch_note(launcher: Launcher, program: str) -> str | None:
    """Why an MPI program may have failed: it links another MPI than the launcher's flavour."""
    path = shutil.which(program) or program
    linked = linked_mpi(path) if os.path.exists(path) else None
    if linked is None or launcher.name not in ("mpich", "openmpi") or linked[0] == launcher.name:
        return None
    flavour, lib = linked
    runner = "mpirun" if flavour == "openmpi" else "mpiexec"
    return (
        f"{program} links {flavour} ({lib}) but was launched with {launcher.name}'s {launcher.executable}: "
        f"ranks of one flavour's program under another's launcher each start alone. Name the matching launcher "
        f"and its program, e.g. launcher='{flavour}:/path/to/{flavour}/bin/{runner}'"
    )


def which(name: str) -> str | None:
    """``shutil.which``, then the directory of this Python (where ``pip install mpich``
    puts ``mpiexec``; it is not on PATH when the venv's python is run without activating
    the venv)."""
    return shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))


def default_launcher(
    explicit: str | None = None,
    options: Mapping[str, object] | None = None,
) -> Launcher:
    """The launcher for this process's system, unless ``explicit`` names one.

    Open MPI is told to allow running as root when this process is root. A launcher
    program found only beside this Python is given by its full path.
    """
    opts: dict[str, object] = {"as_root": hasattr(os, "geteuid") and os.geteuid() == 0}
    opts.update(options or {})
    try:
        key: tuple[object, ...] | None = (explicit, *sorted(opts.items()), *map(os.environ.get, _DETECT_ENV))
        hash(key)
    except TypeError:  # an option value that cannot be a key: detect every time
        key = None
    now = time.monotonic()
    hit = _detected.get(key) if key is not None else None
    if hit is not None and now - hit[0] < DETECT_TTL:
        return hit[1]
    launcher = _detect(explicit, opts)
    if key is not None:
        _detected[key] = (now, launcher)
    return launcher


def _detect(explicit: str | None, opts: dict[str, object]) -> Launcher:
    launcher = resolve_launcher(explicit, os.environ, which, mpiexec_flavour, opts)
    if "executable" not in opts and shutil.which(launcher.executable) is None:
        found = which(launcher.executable)
        if found is not None:
            launcher = get_launcher(launcher.name, {**opts, "executable": found})
    return launcher
