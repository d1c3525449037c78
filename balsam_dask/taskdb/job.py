"""What a node needs to run one database task, and what it sends back. Pure.

``balsam-dask serve`` claims a task from the store and turns its row (and its app's hooks,
its parents' work directories) into a :class:`DbJob`; the node-worker runs it with
``balsam_dask.worker.dbtask.run_db_task`` and returns a :class:`DbResult` (or raises, with
the transfers it made attached to the error as ``transfers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Transfer:
    """One stage-in or stage-out item as it ran: a recorded step of its task."""

    direction: str  # "in" | "out"
    src: str
    dest: str
    transport: str  # the transport's name ("copy", "rsync", "scp", ...)
    attempts: int
    ok: bool
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0
    nbytes: int = 0


@dataclass(frozen=True)
class DbJob:
    """One database task as its node runs it (its TaskSpec travels as the task's annotation).

    ``function`` (``pkg.mod:fn``, called with ``args`` and ``params`` as keyword arguments)
    or an app (the spec's command template rendered with ``params``). ``inputs``: ``(parent
    id, parent work directory, glob)`` to bring into the work directory (``input_mode``
    ``link`` or ``copy``). ``stage_in``/``stage_out``: ``{src, dest}`` items as
    ``taskdb.fields`` checked them. ``hooks``: ``pre``/``post``/``error``/``timeout`` import
    paths (the app's)."""

    task_id: int
    name: str
    function: str | None = None
    args: tuple[Any, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[tuple[int, str, str], ...] = ()
    input_mode: str = "link"
    stage_in: tuple[dict[str, str], ...] = ()
    stage_out: tuple[dict[str, str], ...] = ()
    hooks: dict[str, str] = field(default_factory=dict)
    transfer_retries: int = 2

    def to_dict(self) -> dict[str, Any]:
        """Its fields as they travel, shallow (``dataclasses.asdict`` copies every nested
        dict and list: a third of what claiming a task cost)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DbJob:
        """A job from its fields as they travel (``dataclasses.asdict``; lists for tuples)."""
        j = dict(d)
        j["args"] = tuple(j.get("args") or ())
        j["inputs"] = tuple(tuple(i) for i in j.get("inputs") or ())
        j["stage_in"] = tuple(j.get("stage_in") or ())
        j["stage_out"] = tuple(j.get("stage_out") or ())
        return cls(**j)


@dataclass(frozen=True)
class DbResult:
    """A database task's outcome on its node: its value (an ``AppResult`` for apps), its work
    directory, the transfers it made, and the task rows its hooks asked to create (rows as
    ``Store.add_tasks`` takes them)."""

    value: Any
    workdir: str
    transfers: tuple[Transfer, ...] = ()
    new_tasks: tuple[dict[str, Any], ...] = ()
