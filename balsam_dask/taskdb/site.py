"""A site's configuration (``site.yaml``): where ``balsam-dask serve --site DIR`` runs the tasks of
a store, on which nodes, within which limits, and which tasks it takes. Pure.

:func:`parse_site` turns the loaded YAML mapping into a frozen :class:`SiteConfig`; every unknown
key, wrong type or bad value is one :class:`~balsam_dask.errors.InvalidSiteConfig` naming the
file, the key path and a correct form. :func:`site_template` writes a commented ``site.yaml``.
Reading the file, resolving its paths and building the cluster: ``deploy/site.py``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from balsam_dask import validate
from balsam_dask.errors import InvalidSiteConfig, InvalidSpec
from balsam_dask.mpi_tasks.launchers import ALIASES, LAUNCHERS
from balsam_dask.packing.policy import SiteLimits
from balsam_dask.spec import NodeShape, check_bind, parse_duration, validate_tags
from balsam_dask.taskdb import fields as taskfields
from balsam_dask.taskdb.sitetemplate import SCHEDULERS, site_template

__all__ = ["SCHEDULERS", "SiteConfig", "parse_site", "site_template"]

#: What ``max_in_flight`` defaults to, per core of the site.
IN_FLIGHT_PER_CORE = 4
_NAME = re.compile(r"^[^\s'\"#\x00-\x1f\x7f]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)
_URL = re.compile(r"^(sqlite|postgres|postgresql)(\+\w+)?://", re.IGNORECASE)


@dataclass(frozen=True)
class BatchOptions:
    """The batch job's options (slurm, pbs, lsf); ``partition`` is Slurm's ``--partition``."""

    queue: str | None = None
    account: str | None = None
    partition: str | None = None
    job_prologue: tuple[str, ...] = ()
    job_extra_directives: tuple[str, ...] = ()
    python: str | None = None  # None: the Python running serve


@dataclass(frozen=True)
class NodeOptions:
    """One node's shape and how MPI tasks launch there. ``cores_per_node`` None (local only):
    this machine's cores shared by the emulated nodes; ``bind`` None: the cluster's default."""

    cores_per_node: int | None = None
    gpus_per_node: int = 0
    memory_per_node: int | None = None  # bytes
    launcher: str | None = None
    bind: str | None = None


@dataclass(frozen=True)
class LocalOptions:
    nodes: int = 2  # emulated nodes of a local site


@dataclass(frozen=True)
class Limits:
    """The allocation policy's limits (``packing.policy.SiteLimits``; durations in seconds) and
    ``job_walltime``, the walltime of an allocation requested without one (None: no end)."""

    min_nodes: int = 1
    max_nodes_per_job: int = 64
    max_total_nodes: int = 64
    max_queued_jobs: int = 8
    min_walltime: float = 600.0
    max_walltime: float = 21600.0
    idle_timeout: float = 60.0
    queued_timeout: float = 14400.0
    default_task_walltime: float = 3600.0
    job_walltime: float | None = 1800.0


@dataclass(frozen=True)
class ServeOptions:
    """``balsam-dask serve``: exit after ``idle_ttl`` seconds without work unless ``persistent``;
    claim tasks for ``lease`` seconds (renewed); at most ``max_in_flight`` tasks at once."""

    idle_ttl: float = 300.0
    lease: float = 60.0
    max_in_flight: int | None = None  # None only while the cores are unknown
    persistent: bool = False


@dataclass(frozen=True)
class TaskSelection:
    """Which database tasks the site takes: every tag must match; ``apps`` empty: any app."""

    tags: tuple[tuple[str, str], ...] = ()
    apps: tuple[str, ...] = ()

    def takes(self, app: str | None, tags: Mapping[str, str]) -> bool:
        if self.apps and app not in self.apps:
            return False
        return all(tags.get(k) == v for k, v in self.tags)


@dataclass(frozen=True)
class SiteConfig:
    scheduler: str  # one of SCHEDULERS
    store: str  # a SQLite file (relative: to the site directory) or a URL
    workdir: str | None = None  # None: the site directory
    batch: BatchOptions = field(default_factory=BatchOptions)
    node: NodeOptions = field(default_factory=NodeOptions)
    local: LocalOptions = field(default_factory=LocalOptions)
    limits: Limits = field(default_factory=Limits)
    serve: ServeOptions = field(default_factory=ServeOptions)
    tasks: TaskSelection = field(default_factory=TaskSelection)

    @property
    def is_batch(self) -> bool:
        return self.scheduler != "local"

    @property
    def total_cores(self) -> int | None:
        """The cores of every node the site may hold at once (None: cores per node unknown)."""
        cores = self.node.cores_per_node
        if cores is None:
            return None
        return cores * (self.limits.max_total_nodes if self.is_batch else self.local.nodes)

    def site_limits(self) -> SiteLimits:
        """The allocation policy's limits (the cores per node must be known)."""
        if self.node.cores_per_node is None:
            raise InvalidSpec("node.cores_per_node is unknown: give it, e.g. cores_per_node: 4")
        lim = self.limits
        shape = NodeShape(self.node.cores_per_node, self.node.gpus_per_node, self.node.memory_per_node)
        return SiteLimits(
            min_nodes=lim.min_nodes, max_nodes_per_job=lim.max_nodes_per_job, max_walltime=lim.max_walltime,
            min_walltime=lim.min_walltime, max_queued_jobs=lim.max_queued_jobs, max_total_nodes=lim.max_total_nodes,
            node=shape, queued_timeout=lim.queued_timeout, idle_timeout=lim.idle_timeout,
            default_task_walltime=lim.default_task_walltime,
        )  # fmt: skip


# ----------------------------------------------------------------------------- checks of one value
def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidSpec(repr(value))
    return value


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else check(v)


def _lines(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    out = validate.strings("lines", value, "[]")
    if any("\n" in s or "\r" in s for s in out):
        raise InvalidSpec("one line each")
    return out


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or _CONTROL.search(value):
        raise InvalidSpec(repr(value))
    return value


def _store(value: Any) -> str:
    text = _path(value).strip()
    if "://" in text:
        if not _URL.match(text) or text.rstrip("/").endswith(":"):
            raise InvalidSpec(text)
    elif ":memory:" in text or (":" in text.split("/")[0] and not text.startswith("/")):
        raise InvalidSpec(text)
    return text


def _integer(minimum: int) -> Callable[[Any], int]:
    return lambda v: validate.integer("n", v, "", minimum)


def _duration(value: Any) -> float:
    seconds = parse_duration("d", value)
    assert seconds is not None
    return seconds


def _memory(value: Any) -> int:
    """Bytes from an integer or ``"64GB"``, ``"500MiB"`` (decimal units; ``i``: binary)."""
    if type(value) is int and value > 0:
        return value
    m = _BYTES.match(value) if isinstance(value, str) else None
    if not m:
        raise InvalidSpec(repr(value))
    power = "kmgtp".find(m.group(2).lower()) + 1
    n = int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)
    if n <= 0:
        raise InvalidSpec(repr(value))
    return n


def _apps(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(taskfields.app_name(a) for a in validate.strings("apps", value, "[]"))


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise InvalidSpec(repr(value))
        return str(value)

    return check


_LAUNCHER_NAMES = ", ".join(sorted({*LAUNCHERS, *ALIASES}))

#: section -> key -> (check, what to give, a correct form). Section "" is the top level.
# fmt: off
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], str, str]]] = {
    "": {
        "scheduler": (_choice(SCHEDULERS), f"one of {', '.join(SCHEDULERS)}", "local"),
        "store": (_store, "a SQLite file (relative to the site directory) or a postgresql:// URL", "balsam.db"),
        "workdir": (_optional(_path), "a directory for the tasks' work (null: the site directory)", "/scratch/me/run"),
    },
    "batch": {
        "queue": (_optional(_name), "a queue name or null", "debug"),
        "account": (_optional(_name), "a project or account name or null", "myproject"),
        "partition": (_optional(_name), "a Slurm partition name or null", "gpu"),
        "job_prologue": (_lines, "a list of shell lines", "['module load cuda']"),
        "job_extra_directives": (_lines, "a list of batch directives", "['--constraint=gpu']"),
        "python": (_optional(_path), "the Python on the compute nodes or null", "/opt/venv/bin/python"),
    },
    "node": {
        "cores_per_node": (_optional(_integer(1)), "an integer >= 1", "64"),
        "gpus_per_node": (_integer(0), "an integer >= 0", "4"),
        "memory_per_node": (_optional(_memory), "bytes or a size such as 64GB, or null", "64GB"),
        "launcher": (_optional(taskfields.launcher),
                     f"an MPI launcher ({_LAUNCHER_NAMES}), optionally with its program, or null",
                     "openmpi:/usr/bin/mpirun"),
        "bind": (_optional(check_bind), "core, none or null (the cluster's default)", "core"),
    },
    "local": {"nodes": (_integer(0), "an integer >= 0", "2")},
    "limits": {
        "min_nodes": (_integer(1), "an integer >= 1", "1"),
        "max_nodes_per_job": (_optional(_integer(1)), "an integer >= 1", "16"),
        "max_total_nodes": (_optional(_integer(1)), "an integer >= 1", "64"),
        "max_queued_jobs": (_integer(1), "an integer >= 1", "8"),
        "min_walltime": (_duration, "a duration", "'00:10:00'"),
        "max_walltime": (_duration, "a duration", "'06:00:00'"),
        "idle_timeout": (_duration, "a duration", "60"),
        "queued_timeout": (_duration, "a duration", "'04:00:00'"),
        "default_task_walltime": (_duration, "a duration", "'01:00:00'"),
        "job_walltime": (_optional(_duration), "a duration or null", "'00:30:00'"),
    },
    "serve": {
        "idle_ttl": (_duration, "a duration", "5m"),
        "lease": (_duration, "a duration", "60"),
        "max_in_flight": (_optional(_integer(1)), "an integer >= 1 or null (4 x the site's cores)", "256"),
        "persistent": (lambda v: validate.flag("persistent", v), "true or false", "false"),
    },
    "tasks": {
        "tags": (validate_tags, "a mapping of tag names to values", "{experiment: sweep1}"),
        "apps": (_apps, "a list of app names", "[sim, post]"),
    },
}
# fmt: on
SECTIONS = tuple(s for s in SCHEMA if s)
_SECTION_EXAMPLE = {s: f"{k}: {ex}" for s, keys in SCHEMA.items() if s for k, (_, _, ex) in list(keys.items())[:1]}


def _invalid(where: str, path: str, value: Any, want: str, example: str) -> InvalidSiteConfig:
    key = path.rpartition(".")[2]
    return InvalidSiteConfig(where, path, f"{path}={value!r} is invalid: give {want}, e.g. {key}: {example}")


def _unknown(where: str, section: str, key: Any) -> InvalidSiteConfig:
    path = f"{section}.{key}" if section else str(key)
    known = list(SCHEMA[section]) + (list(SECTIONS) if not section else [])
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    elsewhere = [s for s in SECTIONS if key in SCHEMA[s] and s != section]
    if close:
        best = f"{section}.{close[0]}" if section else close[0]
    elif elsewhere:
        best = f"{elsewhere[0]}.{key}"
    else:
        listing = ", ".join(known)
        return InvalidSiteConfig(where, path, f"{path} is not a site key: give one of {listing}")
    last = best.rpartition(".")[2]
    example = SCHEMA[best.rpartition(".")[0]][last][2] if last in SCHEMA[best.rpartition(".")[0]] else "..."
    if last in SECTIONS and not section:
        example = f"{{{_SECTION_EXAMPLE[last]}}}"
    return InvalidSiteConfig(where, path, f"{path} is not a site key: did you mean {best}? e.g. {last}: {example}")


def _section(where: str, data: Mapping[Any, Any], section: str) -> dict[str, Any]:
    """The checked values of one section (its given keys only)."""
    out = {}
    for key, value in data.items():
        if key not in SCHEMA[section]:
            raise _unknown(where, section, key)
        check, want, example = SCHEMA[section][key]
        path = f"{section}.{key}" if section else key
        try:
            out[key] = check(value)
        except InvalidSpec:
            raise _invalid(where, path, value, want, example) from None
    return out


# ----------------------------------------------------------------------------- the whole file
def parse_site(data: Mapping[str, Any] | None, where: str = "site.yaml", *, cpu_count: int | None = None) -> SiteConfig:
    """A validated :class:`SiteConfig` from a loaded ``site.yaml``. ``cpu_count`` (this
    machine's cores) gives a local site without ``node.cores_per_node`` its cores per node."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidSiteConfig(where, "", f"the file holds {type(data).__name__} {data!r}: give a mapping of "
                                "site keys, e.g. scheduler: local")  # fmt: skip
    top = _section(where, {k: v for k, v in data.items() if k not in SECTIONS}, "")
    given: dict[str, dict[str, Any]] = {}
    for s in SECTIONS:
        value = data.get(s)
        if value is not None and not isinstance(value, Mapping):
            raise InvalidSiteConfig(where, s, f"{s}={value!r} is invalid: give a mapping of {s} keys, e.g. "
                                    f"{s}: {{{_SECTION_EXAMPLE[s]}}}")  # fmt: skip
        given[s] = _section(where, value or {}, s)
    if "scheduler" not in top:
        raise InvalidSiteConfig(where, "scheduler", f"scheduler is missing: give one of {', '.join(SCHEDULERS)}, "
                                "e.g. scheduler: local")  # fmt: skip
    scheduler = top["scheduler"]
    batch, node, local, limits = (given[s] for s in ("batch", "node", "local", "limits"))
    _check_scheduler(where, scheduler, batch, node)
    if scheduler == "local":
        nodes = local.get("nodes", LocalOptions.nodes)
        if node.get("cores_per_node") is None and cpu_count is not None:
            node["cores_per_node"] = max(1, cpu_count // max(nodes, 1))
        for key in ("max_nodes_per_job", "max_total_nodes"):
            if limits.get(key) is None:
                limits[key] = max(nodes, 1)
        limits.setdefault("job_walltime", None)
    limits = {k: v for k, v in limits.items() if v is not None or k == "job_walltime"}
    site = SiteConfig(
        scheduler=scheduler, store=top.get("store", "balsam.db"), workdir=top.get("workdir"),
        batch=BatchOptions(**batch), node=NodeOptions(**node), local=LocalOptions(**local), limits=Limits(**limits),
        serve=ServeOptions(**given["serve"]), tasks=TaskSelection(**given["tasks"]),
    )  # fmt: skip
    _check_limits(where, site, data.get("limits") or {})
    if site.serve.max_in_flight is None and site.total_cores is not None:
        site = replace(site, serve=replace(site.serve, max_in_flight=IN_FLIGHT_PER_CORE * site.total_cores))
    return site


def _check_scheduler(where: str, scheduler: str, batch: dict[str, Any], node: dict[str, Any]) -> None:
    if scheduler == "local":
        for key, value in batch.items():
            if value:
                raise _invalid(where, f"batch.{key}", value, "null with scheduler: local (batch options are for "
                               "slurm, pbs and lsf)", "null")  # fmt: skip
        return
    if node.get("cores_per_node") is None:
        raise _invalid(where, "node.cores_per_node", None, f"the cores of one compute node (scheduler: {scheduler})",
                       "64")  # fmt: skip
    partition = batch.get("partition")
    if partition and scheduler != "slurm":
        raise _invalid(where, "batch.partition", partition, f"null: partitions are Slurm's ({scheduler} takes a "
                       "queue)", "null")  # fmt: skip
    if partition and batch.get("queue"):
        raise _invalid(where, "batch.partition", partition, "one of batch.queue and batch.partition (on Slurm both "
                       "are --partition)", "null")  # fmt: skip


def _check_limits(where: str, site: SiteConfig, given: Mapping[str, Any]) -> None:
    """Limits that contradict each other (a value shown as given)."""
    lim = site.limits
    for key in ("max_nodes_per_job", "max_total_nodes"):
        if getattr(lim, key) < lim.min_nodes:
            raise _invalid(where, f"limits.{key}", getattr(lim, key), f"an integer >= limits.min_nodes "
                           f"({lim.min_nodes})", str(max(lim.min_nodes, 16)))  # fmt: skip
    if lim.max_walltime < lim.min_walltime:
        shown = given.get("max_walltime", lim.max_walltime)
        want = f"a duration >= limits.min_walltime ({lim.min_walltime:g} s)"
        raise _invalid(where, "limits.max_walltime", shown, want, "'06:00:00'")
    if site.scheduler == "local" and site.local.nodes > lim.max_nodes_per_job:
        raise _invalid(where, "local.nodes", site.local.nodes, f"at most limits.max_nodes_per_job "
                       f"({lim.max_nodes_per_job})", str(lim.max_nodes_per_job))  # fmt: skip
