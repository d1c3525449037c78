"""Task and resource specifications: pure, frozen, validated at construction.

Shared by every layer (client, plugin, store, launchers, packing policy). No I/O here.

A task occupies ``nodes`` nodes; on each it runs ``ranks_per_node`` ranks of
``threads_per_rank`` cores and ``gpus_per_rank`` GPUs. A serial task (a Python function
or an executable) is one rank on one node: ``cores`` threads and ``gpus`` GPUs.
Tasks with ``nodes == 1`` pack onto nodes beside others; wider tasks take whole nodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any, Literal

from balsam_dask import validate
from balsam_dask.errors import InvalidSpec, InvalidTags

TaskKind = Literal["python", "app", "mpi"]
KINDS: tuple[str, ...] = ("python", "app", "mpi")

#: How often a task that timed out is restarted automatically when no ``on_timeout``
#: handler is given (Balsam restarts timed-out jobs by default; we bound it).
DEFAULT_TIMEOUT_RETRIES = 3

MAX_TAG_LENGTH = 256
#: Longest task name: names label work directories, store rows and Dask keys.
MAX_NAME_LENGTH = 200
_BAD_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")
_TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_HMS = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")
_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


#: Mantissas of walltime classes: 13 per decade, steps of at most 25%; exact for common
#: limits such as 60, 120, 300, 600, 900, 1800, 3600 and 7200 s.
_MANTISSAS = (1.0, 1.2, 1.5, 1.8, 2.0, 2.4, 3.0, 3.6, 4.5, 5.0, 6.0, 7.2, 9.0, 10.0)


@lru_cache(maxsize=1 << 14)
def walltime_class(walltime: float | None) -> float | None:
    """The estimate rounded up to its class (at most 25% more; round values stay exact).

    Tasks whose estimates share a class share a queue, so a backlog where every task has
    its own estimate still forms a few dozen queues. Eligibility uses the class, so it is
    conservative: a task never lands where its own estimate does not fit.
    """
    if walltime is None:
        return None
    exp = math.floor(math.log10(walltime))
    for e in (exp, exp + 1):  # log10 may round down at a decade edge
        scale = 10.0**e
        for m in _MANTISSAS:
            if m * scale * (1 + 1e-12) >= walltime:
                return max(round(m * scale, 9), walltime)
    return walltime


def parse_duration(name: str, value: Any) -> float | None:
    """Seconds from a number, a timedelta, ``"HH:MM:SS"``, ``"D-HH:MM:SS"`` or ``"30m"``."""
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        m = _HMS.match(value.strip())
        u = _UNIT.match(value)
        if m:
            days, hours, minutes, secs = (int(g) if g else 0 for g in m.groups())
            seconds = float(((days * 24 + hours) * 60 + minutes) * 60 + secs)
        elif u:
            seconds = float(u.group(1)) * _UNIT_SECONDS[u.group(2)]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidSpec(
            f"{name}={value!r} is invalid: give a positive duration in seconds or as a string, "
            f'for example {name}=600, {name}="00:10:00" or {name}="10m"'
        )
    return seconds


#: How an MPI task's ranks are bound to cores: ``core`` (each rank to its threads' cores) or
#: ``none``. None (the default) binds tasks that take whole nodes, where the nodes are real
#: machines; emulated nodes that share one host (LocalEnsembleCluster) default to ``none``.
BIND_CHOICES = ("core", "none")


def check_bind(value: Any) -> str | None:
    if value is not None and value not in BIND_CHOICES:
        raise InvalidSpec(f"bind={value!r} is invalid: use bind='core', bind='none' or bind=None (bind whole nodes)")
    return value


def check_name(name: Any) -> str:
    """A task name: a non-empty string of at most MAX_NAME_LENGTH characters, without path
    separators or control characters, and not made of dots only (it names a directory)."""
    ok = isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH
    if not ok or _BAD_NAME_CHARS.search(name) or not name.strip(". "):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 60 else f"{name[:40]!r}... ({len(name)} chars)"
        raise InvalidSpec(
            f"name={shown} is invalid: give 1 to {MAX_NAME_LENGTH} characters, no path separator ('/' or "
            "backslash) or control character, not only dots, e.g. name='fit-7'"
        )
    return name


def validate_tags(tags: Any) -> tuple[tuple[str, str], ...]:
    """Tags as sorted ``(key, value)`` pairs; values are scalars stored as strings."""
    if tags is None:
        return ()
    if not isinstance(tags, Mapping):
        raise InvalidTags(
            f"tags={tags!r} is invalid: tags must be a mapping of names to scalar values, "
            'for example tags={"experiment": "sweep1", "lr": 0.01}'
        )
    pairs = []
    for k, v in tags.items():
        if not isinstance(k, str) or not _TAG_KEY.match(k) or len(k) > MAX_TAG_LENGTH:
            raise InvalidTags(
                f"tag name {k!r} is invalid: names are identifiers such as 'experiment' or "
                "'run.id' (letters, digits, '_', '.', '-'; not starting with a digit)"
            )
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (int, float, str)):
            v = str(v)
        else:
            raise InvalidTags(
                f'tag {k}={v!r} is invalid: values must be str, int, float or bool, for example tags={{"{k}": "value"}}'
            )
        if len(v) > MAX_TAG_LENGTH:
            raise InvalidTags(f"tag {k} is too long ({len(v)} characters; at most {MAX_TAG_LENGTH})")
        pairs.append((k, v))
    return tuple(sorted(pairs))


@dataclass(frozen=True)
class Resources:
    """What one task needs. ``cores``/``gpus`` are per node."""

    nodes: int = 1
    ranks_per_node: int = 1
    threads_per_rank: int = 1
    gpus_per_rank: int = 0
    walltime: float | None = None

    def __post_init__(self) -> None:
        validate.integer("nodes", self.nodes, "nodes=2", 1)
        validate.integer("ranks_per_node", self.ranks_per_node, "ranks_per_node=4", 1)
        validate.integer("threads_per_rank", self.threads_per_rank, "threads_per_rank=2", 1)
        validate.integer("gpus_per_rank", self.gpus_per_rank, "gpus_per_rank=1", 0)
        object.__setattr__(self, "walltime", parse_duration("walltime", self.walltime))

    @classmethod
    def serial(cls, cores: Any = 1, gpus: Any = 0, walltime: Any = None) -> Resources:
        validate.integer("cores", cores, "cores=2", 1)
        validate.integer("gpus", gpus, "gpus=1", 0)
        return cls(1, 1, cores, gpus, walltime)

    @property
    def cores(self) -> int:
        """Cores used on each node."""
        return self.ranks_per_node * self.threads_per_rank

    @property
    def gpus(self) -> int:
        """GPUs used on each node."""
        return self.ranks_per_node * self.gpus_per_rank

    @property
    def total_ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def is_gang(self) -> bool:
        """True when the task spans several nodes and so takes them whole."""
        return self.nodes > 1

    def fit_error(self, node: NodeShape) -> str | None:
        """Why this task can never run on nodes of this shape, or None if it can."""
        if self.cores > node.cores:
            return (
                f"needs {self.cores} cores per node but nodes have {node.cores}; "
                f"use cores<={node.cores} (or ranks_per_node*threads_per_rank<={node.cores})"
            )
        if self.gpus > node.gpus:
            return f"needs {self.gpus} GPUs per node but nodes have {node.gpus}; use gpus<={node.gpus}"
        return None


@dataclass(frozen=True)
class NodeShape:
    """The resources of one node (a node-worker)."""

    cores: int
    gpus: int = 0
    memory: int | None = None

    def __post_init__(self) -> None:
        validate.integer("cores_per_node", self.cores, "cores_per_node=4", 1)
        validate.integer("gpus_per_node", self.gpus, "gpus_per_node=0", 0)
        if self.memory is not None:
            validate.integer("memory_per_node", self.memory, "memory_per_node=8_000_000_000", 1)


@dataclass(frozen=True)
class TaskSpec:
    """Everything balsam_dask knows about a task beyond Dask's own graph."""

    kind: TaskKind = "python"
    resources: Resources = field(default_factory=Resources)
    name: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    priority: int = 0
    timeout: float | None = None
    retries: int = 0
    timeout_retries: int = DEFAULT_TIMEOUT_RETRIES
    isolate: bool = False
    durable: bool = True
    # apps and MPI tasks
    command: tuple[str, ...] | str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    check: bool = True
    launcher: str | None = None
    mpi_args: tuple[str, ...] = ()
    bind: str | None = None  # see BIND_CHOICES

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidSpec(f"kind={self.kind!r} is invalid: use one of {', '.join(KINDS)}")
        if not isinstance(self.resources, Resources):
            raise InvalidSpec(f"resources={self.resources!r} is invalid: pass a Resources(...)")
        if self.name is not None:
            check_name(self.name)
        validate.integer("priority", self.priority, "priority=10")
        object.__setattr__(self, "timeout", parse_duration("timeout", self.timeout))
        tags = dict(self.tags) if isinstance(self.tags, tuple) else self.tags
        object.__setattr__(self, "tags", validate_tags(tags))
        for name in ("params", "env"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, freeze_pairs(name, value))
        check_bind(self.bind)
        validate.integer("retries", self.retries, "retries=2", 0)
        validate.integer("timeout_retries", self.timeout_retries, "timeout_retries=3", 0)
        if self.kind == "python" and self.command is not None:
            raise InvalidSpec("a Python task takes a function, not command=...")
        if self.kind in ("app", "mpi") and self.command is not None:
            _check_command(self.command)
        for k, v in self.env:
            if not isinstance(k, str) or not isinstance(v, str) or not k or "=" in k:
                raise InvalidSpec(
                    f"env entry {k!r}={v!r} is invalid: env maps variable names to strings, "
                    'for example env={"OMP_PLACES": "cores"}'
                )
        if self.resources.is_gang and self.kind != "mpi":
            raise InvalidSpec(
                f"nodes={self.resources.nodes} needs an MPI task: use client.submit_mpi(..., "
                f"nodes={self.resources.nodes})"
            )

    @property
    def tag_dict(self) -> dict[str, str]:
        return dict(self.tags)

    @property
    def runs_in_subprocess(self) -> bool:
        """Apps, MPI tasks and isolated functions run in their own process group."""
        return self.kind != "python" or self.isolate or self.timeout is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description for the store (no payload)."""
        r = self.resources
        out: dict[str, Any] = {
            "kind": self.kind,
            "nodes": r.nodes,
            "ranks_per_node": r.ranks_per_node,
            "threads_per_rank": r.threads_per_rank,
            "gpus_per_rank": r.gpus_per_rank,
            "walltime": r.walltime,
            "priority": self.priority,
            "timeout": self.timeout,
            "retries": self.retries,
            "timeout_retries": self.timeout_retries,
            "isolate": self.isolate,
        }
        if self.command is not None:
            out["command"] = list(self.command) if isinstance(self.command, tuple) else self.command
        if self.params:
            out["params"] = {k: _jsonable(v) for k, v in self.params}
        if self.env:
            out["env"] = dict(self.env)
        if self.workdir:
            out["workdir"] = self.workdir
        if self.launcher:
            out["launcher"] = self.launcher
        if self.mpi_args:
            out["mpi_args"] = list(self.mpi_args)
        if self.bind:
            out["bind"] = self.bind
        if not self.check:
            out["check"] = False
        if not self.durable:
            out["durable"] = False
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, name: str | None = None,
                  tags: Mapping[str, str] | None = None) -> TaskSpec:  # fmt: skip
        """The spec :meth:`to_json` described (a store row's ``spec``; name and tags are columns
        of their own). Unknown keys are an error: a row written by a newer version."""
        d = dict(data)
        resources = Resources(
            d.pop("nodes", 1), d.pop("ranks_per_node", 1), d.pop("threads_per_rank", 1),
            d.pop("gpus_per_rank", 0), d.pop("walltime", None),
        )  # fmt: skip
        command = d.pop("command", None)
        if isinstance(command, list):
            command = tuple(command)
        mpi_args = tuple(d.pop("mpi_args", ()))
        known = {"kind", "priority", "timeout", "retries", "timeout_retries", "isolate", "params", "env", "workdir",
                 "launcher", "bind", "check", "durable"}  # fmt: skip
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidSpec(f"stored spec has unknown field(s) {', '.join(unknown)}: written by a newer balsam_dask?")
        return cls(resources=resources, name=name, tags=tuple(sorted((tags or {}).items())), command=command,
                   mpi_args=mpi_args, **d)  # fmt: skip


def _check_command(command: object) -> None:
    if isinstance(command, str):
        if not command.strip():
            raise InvalidSpec("command='' is empty: give a template such as 'echo {msg}'")
        return
    if not isinstance(command, tuple) or not command or not all(isinstance(a, str) for a in command):
        raise InvalidSpec(
            f"command={command!r} is invalid: give a list of strings such as ['./sim', '--n', '4'] "
            "or a template string such as './sim --n {n}'"
        )


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def freeze_pairs(name: str, mapping: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A mapping as sorted pairs (for frozen specs); rejects non-mappings with a clear error."""
    if mapping is None:
        return ()
    if not isinstance(mapping, Mapping):
        raise InvalidSpec(f"{name}={mapping!r} is invalid: give a dict, e.g. {name}={{'n': 4}}")
    for k in mapping:
        if not isinstance(k, str):
            raise InvalidSpec(f"{name} key {k!r} is invalid: keys must be strings")
    return tuple(sorted(mapping.items()))
