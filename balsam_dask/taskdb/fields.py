"""The fields of database tasks and apps (``Store.add_tasks``, ``Store.add_app``): one check per
field, in validate.py's message format (the value, what is wanted, a correct form). Pure.

Resources follow ``spec.Resources``; ``cores`` and ``gpus`` are per rank (a serial task is one
rank), other names of ``threads_per_rank`` and ``gpus_per_rank``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from balsam_dask import validate
from balsam_dask.errors import InvalidSpec
from balsam_dask.mpi_tasks.launchers import split_launcher
from balsam_dask.spec import parse_duration

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_APP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_APP_NAME = 255
MAX_IMPORT_PATH = 512

#: What a failed or killed parent does to a child: ``fail`` it, naming the parent, or ``run``
#: it once every parent has ended, whatever their outcome.
ON_PARENT_FAILURE = ("fail", "run")
#: An app's hooks, run by the service on the node: before the task, after it succeeded, after
#: an error and after a timeout (these two choose retry, restart or fail).
HOOKS = ("pre", "post", "error", "timeout")

#: Integer fields: their minimum and a correct form.
INTEGERS: dict[str, tuple[int | None, str]] = {
    "nodes": (1, "nodes=2"),
    "ranks_per_node": (1, "ranks_per_node=4"),
    "threads_per_rank": (1, "threads_per_rank=2"),
    "cores": (1, "cores=4"),
    "gpus_per_rank": (0, "gpus_per_rank=1"),
    "gpus": (0, "gpus=1"),
    "retries": (0, "retries=2"),
    "priority": (None, "priority=10"),
}
DURATIONS = ("walltime", "timeout")
#: Fields an app may give defaults for (a task's own value wins).
DEFAULT_FIELDS: tuple[str, ...] = (*(k for k in INTEGERS if k != "priority"), *DURATIONS, "env", "launcher")
#: Other names of resource fields.
ALIASES = {"cores": "threads_per_rank", "gpus": "gpus_per_rank"}
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


def check(field: str, value: Any) -> Any:
    """A resource or scheduling field (integers and durations) checked, durations in seconds."""
    if field in INTEGERS:
        minimum, example = INTEGERS[field]
        return validate.integer(field, value, example, minimum)
    return parse_duration(field, value)


def canonical(values: Mapping[str, Any]) -> dict[str, Any]:
    """Resource values under their canonical names (``cores`` -> ``threads_per_rank``)."""
    out = dict(values)
    for alias, name in ALIASES.items():
        if alias in out:
            if name in out:
                raise InvalidSpec(
                    f"{alias}={out[alias]!r} and {name}={out[name]!r} are both given: give one ({alias} is "
                    f"{name}: per rank, and a serial task is one rank), e.g. {alias}={out[alias]!r}"
                )
            out[name] = out.pop(alias)
    return out


def app_name(value: Any) -> str:
    """An app's name: an identifier (letters, digits, '_', '.', '-'), never a ':' (a function)."""
    if not isinstance(value, str) or not _APP_NAME.match(value) or len(value) > MAX_APP_NAME:
        raise validate.invalid("app", value, f"a name of letters, digits, '_', '.' or '-' (at most {MAX_APP_NAME})",
                               "app='sim'")  # fmt: skip
    return value


def import_path(field: str, value: Any, example: str = "mypkg.tasks:simulate") -> str:
    """A Python callable by import path, ``package.module:function`` (not imported here)."""
    if not isinstance(value, str) or not _IMPORT_PATH.match(value) or len(value) > MAX_IMPORT_PATH:
        raise validate.invalid(field, value, "an import path package.module:function", f"{field}='{example}'")
    return value


def hooks(value: Any) -> dict[str, str]:
    """An app's hooks: a mapping of hook names (HOOKS) to import paths."""
    if not isinstance(value, Mapping):
        raise validate.invalid("hooks", value, f"a mapping of {', '.join(HOOKS)} to import paths",
                               "hooks={'post': 'mypkg.hooks:collect'}")  # fmt: skip
    for k, v in value.items():
        if k not in HOOKS:
            raise InvalidSpec(f"hook {k!r} is unknown: hooks are {', '.join(HOOKS)}, e.g. hooks={{'pre': "
                              "'mypkg.hooks:prepare'}")  # fmt: skip
        import_path(f"hooks.{k}", v, "mypkg.hooks:prepare")
    return dict(value)


def env(value: Any) -> dict[str, str]:
    """Environment variables: names to scalars, as strings."""
    if not isinstance(value, Mapping):
        raise validate.invalid("env", value, "a mapping of variable names to strings", "env={'OMP_PLACES': 'cores'}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise validate.invalid("env", {k: v}, "variable names of letters, digits and '_'",
                                   "env={'OMP_PLACES': 'cores'}")  # fmt: skip
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise validate.invalid(f"env.{k}", v, "a string or a number", f"env={{'{k}': '1'}}")
        out[k] = str(v)
    return out


def launcher(value: Any) -> str:
    """An MPI launcher's name, optionally with its program (``openmpi:/usr/bin/mpirun``)."""
    split_launcher(value)
    return str(value)


def on_parent_failure(value: Any) -> str:
    if value not in ON_PARENT_FAILURE:
        raise validate.invalid("on_parent_failure", value, f"one of {', '.join(ON_PARENT_FAILURE)}",
                               "on_parent_failure='run'")  # fmt: skip
    return str(value)


def json_text(field: str, value: Any, example: str) -> str:
    """``value`` encoded as JSON text (strings, numbers, booleans, null, lists, objects)."""
    try:
        return _dumps(value)
    except (TypeError, ValueError):
        raise validate.invalid(field, value, "JSON values (strings, numbers, booleans, null, lists, objects)",
                               example) from None  # fmt: skip


def params(value: Any) -> dict[str, Any]:
    """Parameters: a mapping of names to JSON values."""
    if type(value) is dict and all(type(k) is str for k in value):
        return value
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise validate.invalid("params", value, "a mapping of names to values", "params={'n': 4}")
    return dict(value)


def args(value: Any) -> list[Any]:
    """A Python function's positional arguments: a list of JSON values."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise validate.invalid("args", value, "a list of JSON values", "args=[1, 'x']")
    return list(value)


def relative_path(field: str, value: Any, example: str) -> str:
    """A path inside the task's work directory: relative, no '..', no control character."""
    ok = isinstance(value, str) and value.strip() and not value.startswith(("/", "~")) and not _CONTROL.search(value)
    if not ok or ".." in value.replace("\\", "/").split("/"):
        raise validate.invalid(field, value, "a path relative to the task's work directory, without '..'", example)
    return str(value)


def globs(field: str, value: Any) -> list[str]:
    """Glob patterns relative to a work directory (``input_files``)."""
    example = f"{field}=['*.h5', 'out/*.json']"
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise validate.invalid(field, value, "a list of glob patterns", example)
    return [relative_path(field, v, example) for v in value]


def location(field: str, value: Any, example: str) -> str:
    """Where data is: a local path, ``scheme://...`` (``file://``...) or ``host:path``."""
    if not isinstance(value, str) or not value.strip() or _CONTROL.search(value):
        raise validate.invalid(field, value, "a path, a URL such as file:///data/x or host:path", example)
    m = _SCHEME.match(value)
    if m and not m.group(2).strip("/"):
        raise validate.invalid(field, value, "a URL with a path", example)
    return value


def location_form(value: str) -> tuple[str, str]:
    """How a location is reached and its path there: ``(scheme, rest)`` for a URL
    (``file``, ``rsync``, ``scp``...), ``("host", path)`` for ``host:path`` (a ':' before the
    first '/'), ``("local", path)`` for a path. The node's staging chooses transports by it."""
    m = _SCHEME.match(value)
    if m:
        return m.group(1).lower(), m.group(2)
    if ":" in value.split("/", 1)[0]:
        return "host", value.split(":", 1)[1]
    return "local", value


def _basename(src: str) -> str:
    return location_form(src)[1].rstrip("/").rsplit("/", 1)[-1]


def stage_in(value: Any) -> list[dict[str, str]]:
    """Stage-in items: ``SRC`` (to the work directory, same base name) or ``{src, dest}``."""
    example = "stage_in=['/data/in.h5', {'src': 'host:/data/cfg.json', 'dest': 'cfg.json'}]"
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise validate.invalid("stage_in", value, "a list of sources or {src, dest} items", example)
    items = []
    for item in value:
        if isinstance(item, str):
            item = {"src": item}
        if not isinstance(item, Mapping) or "src" not in item or set(item) - {"src", "dest"}:
            raise validate.invalid("stage_in", item, "a source or a {src, dest} item", example)
        src = location("stage_in.src", item["src"], example)
        dest = item.get("dest") or _basename(src)
        items.append({"src": src, "dest": relative_path("stage_in.dest", dest, example)})
    return items


def stage_out(value: Any) -> list[dict[str, str]]:
    """Stage-out items: ``{src: glob in the work directory, dest: where to}``."""
    example = "stage_out=[{'src': 'out/*.h5', 'dest': '/project/results/'}]"
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise validate.invalid("stage_out", value, "a list of {src, dest} items", example)
    items = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) != {"src", "dest"}:
            raise validate.invalid("stage_out", item, "a {src, dest} item", example)
        items.append({"src": relative_path("stage_out.src", item["src"], example),
                      "dest": location("stage_out.dest", item["dest"], example)})  # fmt: skip
    return items


def defaults(value: Any) -> dict[str, Any]:
    """An app's defaults: resources (durations in seconds), ``env``, ``launcher``."""
    if not isinstance(value, Mapping):
        raise validate.invalid("defaults", value, "a mapping of resource fields to values", "defaults={'cores': 2}")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k not in DEFAULT_FIELDS:
            raise InvalidSpec(f"default {k!r} is unknown: an app's defaults are {', '.join(DEFAULT_FIELDS)}, e.g. "
                              "defaults={'cores': 2, 'walltime': '10m'}")  # fmt: skip
        out[k] = env(v) if k == "env" else launcher(v) if k == "launcher" else check(k, v)
    canonical(out)  # both names of one field: an error
    return out
