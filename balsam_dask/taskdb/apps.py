"""Apps of the task database: a named, versioned command template with defaults and hooks. Pure.

A task names an app (and optionally a version; else the latest at submission, which the task
keeps) and gives its parameters; the template is rendered with every parameter shell-quoted
(``template.render``). Defaults fill what the task does not give. Hooks are import paths the
service calls on the node (``taskfields.HOOKS``); they are checked for syntax here, not imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from balsam_dask import validate
from balsam_dask.taskdb import fields as taskfields
from balsam_dask.template import template_fields


@dataclass(frozen=True)
class AppDef:
    """One version of an app. ``command``: a template string (``"./sim --n {n}"``) or an argv
    list (each entry a template); ``version`` None: the next one when added."""

    name: str
    command: str | tuple[str, ...]
    version: int | None = None
    description: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    hooks: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        taskfields.app_name(self.name)
        command = self.command
        if not isinstance(command, str) and isinstance(command, Sequence):
            command = tuple(command)
        template_fields(command)  # parses, or says how to write it
        object.__setattr__(self, "command", command)
        if self.version is not None:
            validate.integer("version", self.version, "version=2", 1)
        if self.description is not None and not isinstance(self.description, str):
            raise validate.invalid("description", self.description, "a string", "description='the simulation'")
        object.__setattr__(self, "defaults", taskfields.defaults(self.defaults))
        object.__setattr__(self, "hooks", taskfields.hooks(self.hooks))

    @property
    def fields(self) -> tuple[str, ...]:
        """The parameters a task of this app must give."""
        return template_fields(self.command)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}" if self.version is not None else self.name

    def same_as(self, other: AppDef) -> bool:
        """The same definition, whatever the versions."""
        return (self.command, self.description, dict(self.defaults), dict(self.hooks)) == (
            other.command, other.description, dict(other.defaults), dict(other.hooks))  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The stored columns (command as a string or a list)."""
        command = self.command if isinstance(self.command, str) else list(self.command)
        return {"name": self.name, "version": self.version, "command": command, "description": self.description,
                "defaults": dict(self.defaults), "hooks": dict(self.hooks)}  # fmt: skip
