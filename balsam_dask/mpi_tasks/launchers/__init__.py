"""MPI launchers: one pure argv builder per flavour, a registry and pure detection.

>>> from balsam_dask.spec import Resources
>>> spec = LaunchSpec(argv=("./sim",), resources=Resources(nodes=2, ranks_per_node=2))
>>> get_launcher("mpich").command(spec, ["n1", "n2"])[:7]
['mpiexec', '-n', '4', '-ppn', '2', '-hosts', 'n1,n2']

Detection looks only at what it is given (an environment mapping, a ``which``
function and a ``flavour_of`` function), so it is tested with tables; the impure
helpers that feed it the real ones are in :mod:`balsam_dask.mpi_tasks.detect`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from balsam_dask.errors import LauncherError
from balsam_dask.mpi_tasks.launchers.aprun import AprunLauncher
from balsam_dask.mpi_tasks.launchers.base import Launcher, LaunchSpec
from balsam_dask.mpi_tasks.launchers.jsrun import JsrunLauncher
from balsam_dask.mpi_tasks.launchers.mpich import MpichLauncher
from balsam_dask.mpi_tasks.launchers.openmpi import OpenMPILauncher
from balsam_dask.mpi_tasks.launchers.pals import PalsLauncher
from balsam_dask.mpi_tasks.launchers.srun import SrunLauncher

__all__ = [
    "ALIASES",
    "LAUNCHERS",
    "AprunLauncher",
    "JsrunLauncher",
    "LaunchSpec",
    "Launcher",
    "MpichLauncher",
    "OpenMPILauncher",
    "PalsLauncher",
    "SrunLauncher",
    "detect_launcher",
    "get_launcher",
    "resolve_launcher",
    "split_launcher",
]

LAUNCHERS: dict[str, type[Launcher]] = {
    cls.name: cls
    for cls in (
        AprunLauncher,
        JsrunLauncher,
        MpichLauncher,
        OpenMPILauncher,
        PalsLauncher,
        SrunLauncher,
    )
}

#: Other names users reach for; ``mpiexec`` means MPICH's Hydra, ``mpirun`` Open MPI's.
ALIASES: dict[str, str] = {"mpiexec": "mpich", "hydra": "mpich", "mpirun": "openmpi"}

Which = Callable[[str], "str | None"]
FlavourOf = Callable[[str], "str | None"]


def _canonical(name: object) -> str:
    if isinstance(name, str):
        key = name.strip().lower()
        key = ALIASES.get(key, key)
        if key in LAUNCHERS:
            return key
    raise LauncherError(
        f"unknown launcher {name!r}; use one of: {', '.join(sorted(LAUNCHERS))} "
        f"(aliases: {', '.join(f'{a}->{c}' for a, c in sorted(ALIASES.items()))}), "
        "optionally with the program to run, e.g. 'openmpi:/usr/bin/mpirun'"
    )


def split_launcher(text: object) -> tuple[str, str | None]:
    """``"openmpi:/usr/bin/mpirun"`` -> ``("openmpi", "/usr/bin/mpirun")``: a flavour, and the
    launcher program to run if the name gives one (else the flavour's own, found on PATH)."""
    if not isinstance(text, str):
        _canonical(text)  # raises, naming the value
    name, sep, program = str(text).partition(":")
    canonical = _canonical(name)
    if sep and not program.strip():
        raise LauncherError(
            f"launcher {text!r} names no program after ':'; give one, e.g. launcher='{canonical}:/usr/bin/mpirun'"
        )
    return canonical, (program.strip() or None)


def get_launcher(name: str, options: Mapping[str, object] | None = None) -> Launcher:
    """The launcher called ``name`` (or an alias; ``name:program`` picks the launcher program
    too, e.g. ``"openmpi:/usr/bin/mpirun"``), built with the options it accepts.

    ``options`` may hold options of several flavours (e.g. ``{"as_root": True,
    "mpi": "pmi2"}`` from a configuration file); those the chosen flavour does not take
    are ignored, but a name no flavour knows is an error. ``executable`` (every
    flavour) names the launcher program to run instead of the flavour's default.
    """
    flavour, program = split_launcher(name)
    cls = LAUNCHERS[flavour]
    given: dict[str, Any] = dict(options or {})
    if program is not None:
        given["executable"] = program
    takers: dict[str, list[str]] = {}
    for c in LAUNCHERS.values():
        for opt in c.options:
            takers.setdefault(opt, []).append(c.name)
    unknown = sorted(set(given) - set(takers))
    if unknown:
        known = ", ".join(
            f"{opt} ({'all' if len(names) == len(LAUNCHERS) else ', '.join(names)})"
            for opt, names in sorted(takers.items())
        )
        raise LauncherError(f"unknown launcher option(s) {', '.join(map(repr, unknown))}; options are: {known}")
    return cls(**{k: v for k, v in given.items() if k in cls.options})


def detect_launcher(environ: Mapping[str, str], which: Which, flavour_of: FlavourOf) -> str:
    """The launcher name for the system described by ``environ`` and ``which``.

    Batch-system launchers win inside their own jobs: ``srun`` in a Slurm job
    (``SLURM_JOB_ID``), ``jsrun`` in an LSF job (``LSB_JOBID``); ``aprun`` exists only on
    Cray ALPS systems. Otherwise the first of ``mpiexec``/``mpirun`` on PATH whose
    flavour (``flavour_of(path)``: ``"mpich"``, ``"openmpi"`` or ``"pals"``) is known.
    """
    if (environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")) and which("srun"):
        return "srun"
    if environ.get("LSB_JOBID") and which("jsrun"):
        return "jsrun"
    if which("aprun"):
        return "aprun"
    seen: list[str] = []
    for exe in ("mpiexec", "mpirun"):
        path = which(exe)
        if not path:
            continue
        flavour = flavour_of(path)
        if flavour in LAUNCHERS:
            return flavour
        seen.append(f"{path} (flavour {flavour or 'unknown'})")
    found = f"found {', '.join(seen)}" if seen else "no srun/jsrun job, aprun, mpiexec or mpirun"
    raise LauncherError(
        f"cannot detect the MPI launcher: {found}; install MPICH (pip install mpich) or "
        f"name one explicitly, e.g. launcher='mpich' (one of: {', '.join(sorted(LAUNCHERS))})"
    )


def resolve_launcher(
    explicit: str | None,
    environ: Mapping[str, str],
    which: Which,
    flavour_of: FlavourOf,
    options: Mapping[str, object] | None = None,
) -> Launcher:
    """The explicitly named launcher if any, else the detected one."""
    name = explicit if explicit is not None else detect_launcher(environ, which, flavour_of)
    return get_launcher(name, options)
