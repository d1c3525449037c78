"""Rows of a task submission from the database side (``Store.add_tasks``, ``balsam-dask
submit``), checked and normalized before anything is written. Pure.

A row is a mapping of :data:`FIELDS`. It runs an app of the store (``app``, optionally
``version``: else the latest, which the task keeps) with ``params`` for its template, or a Python
function by import path (``function: pkg.mod:fn``) called with ``args`` and ``params`` (keyword
arguments), JSON values. A row's ``parents`` are task ids of the store, or the ``name`` of an
earlier row of the same batch (so a file can hold a DAG, and no cycle). The first bad row stops
the check with :class:`~balsam_dask.errors.InvalidTaskRow`, naming the row and the field.

Rows that share an app and their resource fields share one ``TaskSpec`` (made once): a sweep
of 100,000 parameter sets costs a dictionary lookup per row for its spec.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from balsam_dask import validate
from balsam_dask.errors import InvalidSpec, InvalidTaskRow
from balsam_dask.spec import Resources, TaskSpec, check_name, validate_tags
from balsam_dask.taskdb import fields as taskfields
from balsam_dask.taskdb.apps import AppDef
from balsam_dask.template import plain, render

#: Every field a row may have.
FIELDS: tuple[str, ...] = (
    "app", "version", "function", "params", "args", "name", "tags", "priority", "nodes", "ranks_per_node",
    "threads_per_rank", "cores", "gpus_per_rank", "gpus", "walltime", "timeout", "retries", "env", "launcher",
    "workdir", "parents", "on_parent_failure", "input_files", "stage_in", "stage_out", "isolate",
)  # fmt: skip
_FIELD_SET = frozenset(FIELDS)
#: The fields that make a row's TaskSpec (with its app).
SPEC_FIELDS = ("nodes", "ranks_per_node", "threads_per_rank", "cores", "gpus_per_rank", "gpus", "walltime",
               "timeout", "retries", "priority", "tags", "env", "launcher", "workdir", "isolate")  # fmt: skip
_SPEC_SET = frozenset(SPEC_FIELDS)
_RESOURCES = tuple(f for f in SPEC_FIELDS if f in taskfields.INTEGERS and f != "priority") + taskfields.DURATIONS


class TaskRow(NamedTuple):
    """A checked row. JSON fields are encoded (text), None when empty."""

    spec: TaskSpec
    name: str | None
    app: str | None
    app_version: int | None
    function: str | None
    params: str | None
    args: str | None
    input_files: str | None
    stage_in: str | None
    stage_out: str | None
    on_parent_failure: str
    parent_ids: tuple[int, ...]  # tasks of the store
    parent_rows: tuple[int, ...]  # earlier rows of this batch, by position


class _Bad(Exception):
    """A field's error inside the checker: which field, and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _freeze(value: Any) -> Hashable:
    """A hashable form that tells 1, 1.0 and True apart (a spec key must not merge them).
    Mappings keep their order: the same values in another order only miss the cache."""
    t = type(value)
    if t in _SCALARS:
        return (t, value)
    if isinstance(value, Mapping):
        return (dict, tuple((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (list, tuple(_freeze(v) for v in value))
    return (t, value)


class RowChecker:
    """Checks rows one after the other (parents may name earlier rows). ``apps``: the store's
    apps by name and version."""

    def __init__(self, apps: Mapping[str, Mapping[int, AppDef]]) -> None:
        self.apps = apps
        self.count = 0
        self._specs: dict[Hashable, TaskSpec] = {}
        self._plain: dict[str, bool] = {}  # app label -> its template renders once every name is given
        self._names: dict[str, int] = {}  # name -> row, or -1: several rows have it

    def check(self, row: Any, where: str | None = None) -> TaskRow:
        """The row normalized; raises InvalidTaskRow naming ``where`` (default: ``row N``)."""
        i = self.count
        where = where or f"row {i + 1}"
        if type(row) is not dict and not isinstance(row, Mapping):
            raise InvalidTaskRow(where, "row", f"{str(row)[:60]!r} is not a mapping of fields; give e.g. "
                                 "{'app': 'sim', 'params': {'n': 4}}", i)  # fmt: skip
        try:
            out = self._check(row, i)
        except _Bad as e:
            raise InvalidTaskRow(where, e.field, e.reason, i) from None
        self.count += 1
        if out.name is not None:
            self._names[out.name] = -1 if out.name in self._names else i
        return out

    def _check(self, row: Mapping[str, Any], i: int) -> TaskRow:
        if not _FIELD_SET.issuperset(row):
            k = next(k for k in row if k not in _FIELD_SET)
            raise _Bad(str(k), f"{k!r} is not a field; fields are {', '.join(FIELDS)}")
        app, fn = self._target(row)
        field = "name"
        try:
            spec = self._spec_of(row, app, fn)
            name = row.get("name")
            if name is not None:
                check_name(name)
            field = "params"
            params = taskfields.params(row.get("params") or {})
            if app is not None:
                self._render_check(app, params)
            params_text = taskfields.json_text("params", params, "params={'n': 4}") if params else None
            field = "args"
            args = row.get("args")
            if args is not None and app is not None:
                raise InvalidSpec(f"args={args!r} is for function tasks: an app takes params, e.g. params={{'n': 4}}")
            args_text = taskfields.json_text("args", taskfields.args(args), "args=[1, 'x']") if args else None
            field = "parents"
            parent_ids, parent_rows = self._parents(row.get("parents"))
            field = "on_parent_failure"
            policy = taskfields.on_parent_failure(row.get("on_parent_failure", "fail"))
            field = "input_files"
            files = _text(field, taskfields.globs(field, row[field])) if row.get(field) else None
            field = "stage_in"
            stage_in = _text(field, taskfields.stage_in(row[field])) if row.get(field) else None
            field = "stage_out"
            stage_out = _text(field, taskfields.stage_out(row[field])) if row.get(field) else None
        except InvalidSpec as e:
            raise _Bad(field, str(e)) from None
        return TaskRow(spec, name, app.name if app else None, app.version if app else None, fn, params_text,
                       args_text, files, stage_in, stage_out, policy, parent_ids, parent_rows)  # fmt: skip

    def _target(self, row: Mapping[str, Any]) -> tuple[AppDef | None, str | None]:
        name, fn = row.get("app"), row.get("function")
        if (name is None) == (fn is None):
            raise _Bad("app", "a task runs an app or a function: give one of app='sim' (an app in the store) "
                       "or function='mypkg.tasks:simulate'" + ("" if name is None else ", not both"))  # fmt: skip
        if fn is not None:
            if row.get("version") is not None:
                raise _Bad("version", f"version={row['version']!r} is for apps: a function task has none")
            try:
                return None, taskfields.import_path("function", fn)
            except InvalidSpec as e:
                raise _Bad("function", str(e)) from None
        versions = self.apps.get(name) if isinstance(name, str) else None
        if not versions:
            try:
                taskfields.app_name(name)
            except InvalidSpec as e:
                raise _Bad("app", str(e)) from None
            known = ", ".join(sorted(self.apps)[:10]) or "none yet"
            raise _Bad("app", f"app {name!r} is not in the store (apps: {known}); add it with balsam-dask app add "
                       f"{name} --command './sim --n {{n}}'")  # fmt: skip
        version = row.get("version")
        if version is None:
            return versions[max(versions)], None
        if version not in versions or type(version) is not int:
            have = ", ".join(map(str, sorted(versions)))
            raise _Bad("version", validate.invalid("version", version, f"a version of {name} ({have})",
                                                   f"version={max(versions)}").args[0])  # fmt: skip
        return versions[version], None

    def _spec_of(self, row: Mapping[str, Any], app: AppDef | None, fn: str | None) -> TaskSpec:
        parts: list[Hashable] = [app.label if app else fn]
        parts += [(k, _freeze(v)) for k, v in row.items() if k in _SPEC_SET]  # another order: another key
        try:
            key: Hashable | None = tuple(parts)
            spec = self._specs.get(key)
        except TypeError:  # unorderable or unhashable values: no sharing (checked below)
            key, spec = None, None
        if spec is None:
            spec = _make_spec(row, app, fn)
            if key is not None:
                self._specs[key] = spec
        return spec

    def _render_check(self, app: AppDef, params: Mapping[str, Any]) -> None:
        """The template renders with these parameters (a plain one: every name is given)."""
        is_plain = self._plain.get(app.label)
        if is_plain is None:
            is_plain = self._plain[app.label] = plain(app.command)
        if not is_plain or not all(f in params for f in app.fields):
            render(app.command, params)

    def _parents(self, value: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if value is None:
            return (), ()
        example = "parents=[1099511627777, 'prepare']"
        items = [value] if isinstance(value, (int, str)) else value
        if not isinstance(items, Sequence):
            raise validate.invalid("parents", value, "a list of task ids or names of earlier rows", example)
        ids: dict[int, None] = {}
        rows: dict[int, None] = {}
        for p in items:
            if type(p) is int and p > 0:
                ids[p] = None
            elif isinstance(p, str) and p:
                j = self._names.get(p)
                if j is None or j < 0:
                    why = "is no earlier row's name" if j is None else "names several earlier rows"
                    raise InvalidSpec(f"parent {p!r} {why}: name a row (name: {p}) once, before its children, or "
                                      f"give a task id, e.g. {example}")  # fmt: skip
                rows[j] = None
            else:
                raise validate.invalid("parents", p, "task ids (positive integers) or names of earlier rows", example)
        return tuple(ids), tuple(rows)


def _text(field: str, value: Any) -> str:
    return taskfields.json_text(field, value, f"{field}=[...]")


def _make_spec(row: Mapping[str, Any], app: AppDef | None, fn: str | None) -> TaskSpec:
    """The TaskSpec of a row: the app's defaults under the row's own values."""
    field = "nodes"
    try:
        given = {}
        for field in _RESOURCES:
            if field in row:
                given[field] = taskfields.check(field, row[field])
        field = next((a for a in taskfields.ALIASES if a in given), "nodes")
        own = taskfields.canonical(given)
        defaults = dict(app.defaults) if app else {}
        env = defaults.pop("env", {})
        launcher = defaults.pop("launcher", None)
        r = {**taskfields.canonical(defaults), **own}
        nodes, rpn = r.get("nodes", 1), r.get("ranks_per_node", 1)
        resources = Resources(nodes, rpn, r.get("threads_per_rank", 1), r.get("gpus_per_rank", 0), r.get("walltime"))
        field = "env"
        if "env" in row:
            env = {**env, **taskfields.env(row["env"])}
        field = "launcher"
        if row.get("launcher") is not None:
            launcher = taskfields.launcher(row["launcher"])
        field = "workdir"
        workdir = row.get("workdir")
        if workdir is not None:
            taskfields.relative_path("workdir", workdir, "workdir='runs/sim-7'")
        field = "tags"
        tags = validate_tags(row.get("tags"))
        field = "priority"
        priority = taskfields.check("priority", row.get("priority", 0))
        field = "isolate"  # a function in a process of its own (an app always has one)
        isolate = validate.flag("isolate", row.get("isolate", False))
        wide = nodes > 1 or rpn > 1
        kind = ("mpi" if wide or launcher else "app") if app else ("mpi" if wide else "python")
        field = "nodes"
        return TaskSpec(kind=kind, resources=resources, tags=tags, priority=priority, timeout=r.get("timeout"),  # type: ignore[arg-type]
                        retries=r.get("retries", 0), command=app.command if app else None, env=env,
                        launcher=launcher, workdir=workdir, isolate=isolate)  # fmt: skip
    except InvalidSpec as e:
        raise _Bad(field, str(e)) from None


def check_rows(rows: Iterable[Any], apps: Mapping[str, Mapping[int, AppDef]],
               labels: Sequence[str] | None = None) -> list[TaskRow]:  # fmt: skip
    """Every row checked (``labels[i]`` names row i in errors, e.g. ``tasks.yaml line 12``;
    read only for the row in error, so it may be computed lazily)."""
    checker = RowChecker(apps)
    check = checker.check
    try:
        return [check(r) for r in rows]
    except InvalidTaskRow as e:
        if labels is None:
            raise
        raise InvalidTaskRow(labels[e.index], e.field, e.reason, e.index) from None
