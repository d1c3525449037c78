"""Task files for ``balsam-dask submit --file``: YAML, CSV or JSON lines, one task per row,
each row labelled with its file and line for error messages (``tasks.csv line 7``).

- YAML (``.yaml``, ``.yml``): a list of rows, each a mapping of ``taskrows.FIELDS``.
- JSON lines (``.jsonl``, ``.ndjson``): one JSON object per line; blank lines are skipped.
- CSV (``.csv``): a header of field names; a cell that is empty is not given. Integer fields and
  durations are read as numbers when they are; ``params``, ``tags``, ``env`` hold a JSON object,
  and ``param.NAME``, ``tag.NAME``, ``env.NAME`` columns give one entry each, as strings;
  ``args``, ``parents``, ``input_files``, ``stage_in`` and ``stage_out`` hold a JSON list or
  ``;``-separated values (a parent of digits only is a task id, else an earlier row's name);
  ``isolate`` is ``true`` or ``false``.

YAML needs PyYAML (a dependency of Dask) and is the slowest to read (PyYAML builds every value
in Python): for very large batches prefer CSV or JSON lines.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, overload

from balsam_dask.errors import InvalidSpec, InvalidTaskRow
from balsam_dask.taskdb import fields as taskfields

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_NUMBERS = frozenset(taskfields.INTEGERS) | {"version"}
_LISTS = ("args", "parents", "input_files", "stage_in", "stage_out")
_OBJECTS = ("params", "tags", "env")
_PREFIXES = {"param.": "params", "tag.": "tags", "env.": "env"}


class TaskFile(NamedTuple):
    """The rows of a task file and, for each, where it is (``labels[i]``)."""

    rows: list[dict[str, Any]]
    labels: Sequence[str]


def load_task_file(path: str | os.PathLike[str]) -> TaskFile:
    """Read a task file (its format from its suffix)."""
    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InvalidSpec(f"task file {p.name!r} has no known suffix: give a .yaml, .yml, .csv or .jsonl file, e.g. "
                          "--file tasks.yaml")  # fmt: skip
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidSpec(f"cannot read the task file {p}: {getattr(e, 'strerror', None) or e}") from None
    return {"yaml": _yaml, "csv": _csv, "jsonl": _jsonl}[fmt](text, p.name)


def _jsonl(text: str, name: str) -> TaskFile:
    rows: list[dict[str, Any]] = []
    labels: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        label = f"{name} line {n}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InvalidTaskRow(label, "row", f"not valid JSON ({e}); give one object per line, e.g. "
                                 '{"app": "sim", "params": {"n": 4}}', len(rows)) from None  # fmt: skip
        rows.append(row)
        labels.append(label)
    return TaskFile(rows, labels)


class _YamlLines(Sequence[str]):
    """The line of each row of a YAML list, found only when asked (an error): composing the
    document again costs as much as loading it."""

    def __init__(self, text: str, name: str, count: int) -> None:
        self._text, self._name, self._count = text, name, count
        self._lines: list[int] | None = None

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if self._lines is None:
            import yaml

            root = yaml.compose(self._text, Loader=_loader())
            self._lines = [node.start_mark.line + 1 for node in root.value]
        return f"{self._name} line {self._lines[i]}"

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(self._count))


def _loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(text: str, name: str) -> TaskFile:
    try:
        import yaml
    except ImportError:  # pragma: no cover - Dask depends on PyYAML
        raise InvalidSpec(f"reading {name} needs PyYAML (pip install pyyaml), or give a .csv or .jsonl file") from None
    try:
        data = yaml.load(text, Loader=_loader())  # CSafeLoader or SafeLoader: no arbitrary objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InvalidSpec(f"{name}{where} is not valid YAML ({problem})") from None
    if data is None:
        return TaskFile([], [])
    if not isinstance(data, list):
        raise InvalidSpec(f"{name} holds a {type(data).__name__}: a task file is a list of tasks, e.g. "
                          "'- {app: sim, params: {n: 4}}'")  # fmt: skip
    return TaskFile(data, _YamlLines(text, name, len(data)))


def _csv(text: str, name: str) -> TaskFile:
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return TaskFile([], [])
    rows: list[dict[str, Any]] = []
    labels: list[str] = []
    start = reader.line_num + 1
    for cells in reader:
        label = f"{name} line {start}"
        start = reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            raise InvalidTaskRow(label, "row", f"{len(cells)} cells for {len(header)} columns ({', '.join(header)})",
                                 len(rows))  # fmt: skip
        row: dict[str, Any] = {}
        for col, cell in zip(header, cells, strict=False):
            if cell != "":
                _put(row, col, cell, label, len(rows))
        rows.append(row)
        labels.append(label)
    return TaskFile(rows, labels)


_FLAGS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _put(row: dict[str, Any], col: str, cell: str, label: str, index: int) -> None:
    """One CSV cell into its row (see the module docstring)."""
    for prefix, field in _PREFIXES.items():
        if col.startswith(prefix) and len(col) > len(prefix):
            row.setdefault(field, {})[col[len(prefix) :]] = cell
            return
    try:
        if col in _NUMBERS:
            row[col] = int(cell) if cell.strip().lstrip("+-").isdigit() else cell
        elif col in taskfields.DURATIONS:
            row[col] = _number(cell)
        elif col == "isolate":  # true/false, 1/0 (another word is left for the row's check to name)
            row[col] = _FLAGS.get(cell.strip().lower(), cell)
        elif col in _OBJECTS:
            row[col] = {**json.loads(cell), **row.get(col, {})}
        elif col in _LISTS:
            row[col] = json.loads(cell) if cell.lstrip().startswith("[") else _items(col, cell)
        else:
            row[col] = cell
    except (ValueError, TypeError) as e:
        kind = "a JSON object" if col in _OBJECTS else "a JSON list or ;-separated values"
        raise InvalidTaskRow(label, col, f"{cell[:60]!r} is not {kind} ({e})", index) from None


def _number(cell: str) -> Any:
    try:
        return float(cell)
    except ValueError:
        return cell


def _items(col: str, cell: str) -> list[Any]:
    items = [v.strip() for v in cell.split(";") if v.strip()]
    return [int(v) if v.isdigit() else v for v in items] if col == "parents" else items
