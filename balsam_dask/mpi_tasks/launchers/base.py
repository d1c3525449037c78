"""What every MPI launcher shares: the launch spec and the abstract launcher.

A launcher is a pure argv builder: given a :class:`LaunchSpec` and the host names
reserved for the task, :meth:`Launcher.command` returns the argv list to start it
(never a shell string) and :meth:`Launcher.environ` the variables to set on the
launcher process itself. Nothing here runs a process, reads a file or looks at
``os.environ``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from balsam_dask.errors import InvalidSpec, LauncherError
from balsam_dask.spec import Resources

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters that would be read as list separators, slot counts or shell syntax
# by one launcher or another; a real host name never contains them.
_BAD_HOST_CHARS = frozenset(",: \t\n\r*/'\"")


def _str_tuple(name: str, value: Any, example: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidSpec(f"{name}={value!r} is invalid: give a list of strings, e.g. {example}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise InvalidSpec(f"{name} entry {item!r} is invalid: every entry must be a string, e.g. {example}")
    return items


def _env_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    example = "env={'OMP_PLACES': 'cores'}"
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        pairs = list(value)
    else:
        raise InvalidSpec(f"env={value!r} is invalid: give a mapping of names to strings, e.g. {example}")
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise InvalidSpec(f"env entry {pair!r} is invalid: give (name, value) pairs, e.g. {example}")
        key, val = pair
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise InvalidSpec(
                f"env name {key!r} is invalid: use letters, digits and '_', not starting with a digit, e.g. {example}"
            )
        if not isinstance(val, str) or "\0" in val:
            raise InvalidSpec(
                f"env {key}={val!r} is invalid: values must be strings without NUL, e.g. env={{'{key}': '1'}}"
            )
        out.append((key, val))
    return tuple(out)


@dataclass(frozen=True)
class LaunchSpec:
    """One MPI launch: the program, its layout and what each rank sees.

    ``gpu_ids`` are the GPU ids visible to the task on each node (the same ids on
    every node); launchers export them as ``CUDA_VISIBLE_DEVICES``.
    """

    argv: tuple[str, ...]
    resources: Resources = field(default_factory=Resources)
    env: tuple[tuple[str, str], ...] = ()
    extra_args: tuple[str, ...] = ()
    cpu_bind: bool = True
    gpu_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        argv = _str_tuple("argv", self.argv, "argv=('./sim', '--n', '4')")
        if not argv or not argv[0]:
            raise InvalidSpec(
                f"argv={self.argv!r} is invalid: the first entry must name the program, e.g. argv=('./sim', '--n', '4')"
            )
        object.__setattr__(self, "argv", argv)
        if not isinstance(self.resources, Resources):
            raise InvalidSpec(
                f"resources={self.resources!r} is invalid: pass a balsam_dask.spec.Resources, "
                "e.g. Resources(nodes=2, ranks_per_node=4)"
            )
        object.__setattr__(self, "env", _env_pairs(self.env))
        object.__setattr__(
            self,
            "extra_args",
            _str_tuple("extra_args", self.extra_args, "extra_args=('--verbose',)"),
        )
        if not isinstance(self.cpu_bind, bool):
            raise InvalidSpec(f"cpu_bind={self.cpu_bind!r} is invalid: use True or False")
        gpu_ids = self.gpu_ids
        if isinstance(gpu_ids, Sequence) and not isinstance(gpu_ids, (str, bytes)):
            gpu_ids = tuple(str(g) if isinstance(g, int) and not isinstance(g, bool) else g for g in gpu_ids)
        gpu_ids = _str_tuple("gpu_ids", gpu_ids, "gpu_ids=('0', '1')")
        for g in gpu_ids:
            if not g or "," in g or g.strip() != g:
                raise InvalidSpec(
                    f"gpu id {g!r} is invalid: give ids such as '0' or 'GPU-5f1c...', e.g. gpu_ids=('0', '1')"
                )
        if len(set(gpu_ids)) != len(gpu_ids):
            raise InvalidSpec(f"gpu_ids={gpu_ids!r} lists a GPU twice; list each GPU once")
        if gpu_ids and len(gpu_ids) < self.resources.gpus:
            raise InvalidSpec(
                f"gpu_ids={gpu_ids!r} lists {len(gpu_ids)} GPU(s) but the task needs "
                f"{self.resources.gpus} per node (ranks_per_node*gpus_per_rank); "
                f"list at least {self.resources.gpus}"
            )
        object.__setattr__(self, "gpu_ids", gpu_ids)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


class Launcher(ABC):
    """A pure builder of one MPI flavour's launch command.

    ``packs`` tells the placement layer whether several independent launches may
    share one node (sub-node tasks packed side by side). ``options`` names the
    keyword arguments the constructor accepts (see ``get_launcher``); every flavour
    takes ``executable``, the launcher program to run (default: ``program``, found on
    PATH).
    """

    name: ClassVar[str]
    program: ClassVar[str]
    packs: ClassVar[bool]
    options: ClassVar[tuple[str, ...]] = ("executable",)

    def __init__(self, *, executable: str | None = None) -> None:
        if executable is not None and (not isinstance(executable, str) or not executable.strip()):
            raise LauncherError(
                f"executable={executable!r} is invalid: give the launcher program's name or path, "
                f"e.g. executable='/opt/mpich/bin/{self.program}'"
            )
        self.executable: str = executable or self.program

    @abstractmethod
    def command(self, spec: LaunchSpec, hosts: Sequence[str]) -> list[str]:
        """The argv that starts ``spec`` on ``hosts`` (one host per node)."""

    def environ(self, spec: LaunchSpec, hosts: Sequence[str]) -> dict[str, str]:
        """Variables to set on the launcher process itself (merged over os.environ)."""
        env = {"OMP_NUM_THREADS": str(spec.resources.threads_per_rank)}
        if spec.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
        return env

    def clear_env(self, environ: Mapping[str, str]) -> list[str]:
        """Variables of ``environ`` (the launching process's) to remove before launching:
        leftovers of the job step the launching worker itself runs in."""
        return []

    def check_hosts(self, spec: LaunchSpec, hosts: Sequence[str]) -> list[str]:
        """The host list validated against the spec: one distinct, well-formed name per node."""
        if isinstance(hosts, (str, bytes)):
            raise LauncherError(
                f"hosts={hosts!r} is invalid: give a list of host names, e.g. hosts=['nid001', 'nid002']"
            )
        host_list = list(hosts)
        nodes = spec.resources.nodes
        if len(host_list) != nodes:
            raise LauncherError(
                f"{self.name}: got {len(host_list)} host(s) {host_list!r} for a task on "
                f"nodes={nodes}; pass exactly one host per node, e.g. hosts={_example_hosts(nodes)!r}"
            )
        for host in host_list:
            if not isinstance(host, str) or not host or _BAD_HOST_CHARS.intersection(host):
                raise LauncherError(
                    f"{self.name}: host name {host!r} is invalid: give plain node names "
                    "without ',', ':', '*', '/', quotes or spaces, e.g. 'nid001'"
                )
        if len(set(host_list)) != len(host_list):
            raise LauncherError(
                f"{self.name}: hosts {host_list!r} name a node twice; a task on nodes={nodes} needs distinct nodes"
            )
        return host_list

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.options)
        return f"{type(self).__name__}({opts})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(getattr(self, k) == getattr(other, k) for k in self.options)

    def __hash__(self) -> int:
        return hash((type(self), *(getattr(self, k) for k in self.options)))


def _example_hosts(nodes: int) -> list[str]:
    return [f"nid{i:03d}" for i in range(1, min(nodes, 3) + 1)] + (["..."] if nodes > 3 else [])
