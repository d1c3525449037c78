"""Command templates: ``"./sim --n {n} --out {out}"`` plus parameters -> argv.
(Design notes: docs/ARCHITECTURE.md, template.py.)
"""

from __future__ import annotations

import functools
import re
import shlex
import string
from collections.abc import Mapping, Sequence

from balsam_dask.errors import InvalidSpec

_FORMATTER = string.Formatter()
_FIELD_HEAD = re.compile(r"^[^.\[]*")


def _show(command: str | Sequence[str]) -> str:
    return repr(command) if isinstance(command, str) else repr(list(command))


@functools.lru_cache(maxsize=512)
def _split(command: str) -> tuple[str, ...]:
    """A string template's words (cached: bulk submissions render one template per task)."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise InvalidSpec(
            f"template {command!r} cannot be split into arguments ({exc}); close every "
            "quote, e.g. \"./sim --title '{title}'\""
        ) from None
    if not words:
        raise InvalidSpec(f"template {command!r} is empty: give a command such as './sim --n {{n}}'")
    return tuple(words)


def _words(command: str | Sequence[str]) -> list[str]:
    """The template's words: shell-split for a string, as given for a list."""
    if isinstance(command, str):
        return list(_split(command))
    if isinstance(command, (bytes, bytearray)) or not isinstance(command, Sequence):
        raise InvalidSpec(
            f"command={command!r} is invalid: give a template string such as './sim --n {{n}}' "
            "or a list of strings such as ['./sim', '--n', '{n}']"
        )
    words = list(command)
    if not words:
        raise InvalidSpec("command=[] is empty: give a list such as ['./sim', '--n', '{n}']")
    for w in words:
        if not isinstance(w, str):
            raise InvalidSpec(
                f"command entry {w!r} in {_show(command)} is invalid: every entry must be a "
                "string, e.g. ['./sim', '--n', '{n}']"
            )
    return words


def _field_names(command: str | Sequence[str], word: str) -> list[str]:
    """The parameter names one word refers to (nested spec fields included)."""
    try:
        parsed = list(_FORMATTER.parse(word))
    except ValueError as exc:
        raise InvalidSpec(
            f"template {_show(command)} is malformed ({exc}); write a parameter as {{name}} "
            "and a literal brace as '{{' or '}}'"
        ) from None
    names: list[str] = []
    for _literal, field, spec, _conversion in parsed:
        if field is None:
            continue
        head = _FIELD_HEAD.match(field)
        name = head.group() if head else ""
        if not name or name.isdigit():
            raise InvalidSpec(
                f"template {_show(command)} has a positional field {{{field}}}; name every "
                "parameter, e.g. './sim --n {n}' with params={'n': 4}"
            )
        names.append(name)
        if spec and "{" in spec:
            names += _field_names(command, spec)
    return names


def template_fields(command: str | Sequence[str]) -> tuple[str, ...]:
    """The parameter names a template needs, in order of first use."""
    if isinstance(command, str) or (isinstance(command, tuple) and all(isinstance(w, str) for w in command)):
        return _cached_fields(command)
    return _fields(command)


@functools.lru_cache(maxsize=512)
def _cached_fields(command: str | tuple[str, ...]) -> tuple[str, ...]:
    return _fields(command)


def _fields(command: str | Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for word in _words(command):
        for name in _field_names(command, word):
            seen.setdefault(name, None)
    return tuple(seen)


def plain(command: str | Sequence[str]) -> bool:
    """True when every field is a bare name (``{n}``, no format spec, conversion, attribute or
    index): such a template renders with any values once every name is given."""
    for word in _words(command):
        for _literal, field, spec, conversion in _FORMATTER.parse(word):
            if field is not None and (spec or conversion or not field.isidentifier()):
                return False
    return True


def validate_template(command: str | Sequence[str], params: Mapping[str, object]) -> None:
    """Check at submit time that ``command`` parses and every parameter it names is given.

    Nothing is formatted, so parameter objects are not touched.
    """
    if not isinstance(params, Mapping):
        raise InvalidSpec(f"params={params!r} is invalid: give a dict, e.g. params={{'n': 4}}")
    for name in template_fields(command):
        if name not in params:
            raise InvalidSpec(f"template {_show(command)} needs parameter {name!r}; pass params={{{name!r}: ...}}")


def render(command: str | Sequence[str], params: Mapping[str, object]) -> list[str]:
    """The argv for ``command`` with ``params`` substituted (see the module docstring)."""
    validate_template(command, params)
    argv: list[str] = []
    for word in _words(command):
        try:
            argv.append(word.format_map(params))  # str.format in C: the same grammar as string.Formatter
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise InvalidSpec(
                f"template {_show(command)} cannot be rendered at {word!r} "
                f"(params given: {', '.join(sorted(map(str, params)))}): {type(exc).__name__}: {exc}"
            ) from None
    return argv


def render_shell(command: str | Sequence[str], params: Mapping[str, object]) -> str:
    """The rendered command as one shell-safe string (for display and logs)."""
    return shlex.join(render(command, params))
