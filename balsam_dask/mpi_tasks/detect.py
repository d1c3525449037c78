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
from collections.abc import Mapping

from balsam_dask.mpi_tasks.launchers import Launcher, get_launcher, resolve_launcher

VERSION_TIMEOUT = 10.0


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
    launcher = resolve_launcher(explicit, os.environ, which, mpiexec_flavour, opts)
    if "executable" not in opts and shutil.which(launcher.executable) is None:
        found = which(launcher.executable)
        if found is not None:
            launcher = get_launcher(launcher.name, {**opts, "executable": found})
    return launcher
