"""Write operations (what the batching writer queues) and read records. Pure.

Operations are small tuples so queuing one from the Dask event loop costs well
under a microsecond; the writer thread turns a batch of them into one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from balsam_dask.spec import TaskSpec


class DbTask(NamedTuple):
    """The columns only a database task has (``Store.add_tasks``): what ``serve`` runs. JSON
    values come encoded (text), once, by the row checker; empty ones are None."""

    app: str | None
    app_version: int | None
    function: str | None
    params: str | None
    args: str | None
    input_files: str | None
    stage_in: str | None
    stage_out: str | None
    on_parent_failure: str | None


#: DbTask's fields are the names of their columns.
DB_TASK_COLS: tuple[str, ...] = DbTask._fields


class NewTask(NamedTuple):
    """Create a task (state CREATED). ``spec=None`` is a plain Dask task.

    ``payload`` may be a callable returning the bytes: the writer thread calls it, so
    serializing a durable task's payload costs the Dask event loop nothing."""

    id: int
    key: str
    spec: TaskSpec | None = None
    kind: str | None = None  # default: spec.kind, or "dask" without a spec
    name: str | None = None  # default: spec.name
    parents: tuple[int, ...] = ()
    payload: bytes | Callable[[], bytes | None] | None = None
    created_at: float = 0.0  # 0: now
    submitted_by: int | None = None
    db: DbTask | None = None  # a database task's own columns


class Transition(NamedTuple):
    """One state change of one task, with its provenance."""

    id: int
    task_id: int
    from_state: str | None
    to_state: str
    ts: float
    attempt: int = 0
    worker: str | None = None
    hosts: str | None = None
    message: str | None = None


#: Task columns a TaskUpdate may set.
UPDATABLE_TASK_FIELDS = frozenset(
    {
        "workdir",
        "return_code",
        "error_tail",
        "result",
        "result_ref",
        "result_digest",  # SHA-256 of the result file, as its worker wrote it: signed with result_ref
        "payload",
        "kill_requested",
        "session_id",
        "lease_owner",
        "lease_expires",
    }
)


class TaskUpdate(NamedTuple):
    """Set non-state columns of a task (result pointer, return code, error tail...)."""

    task_id: int
    fields: dict[str, Any]


class AllocationWrite(NamedTuple):
    """Create (if new) or update an allocation record."""

    id: int
    fields: dict[str, Any]


class Heartbeat(NamedTuple):
    session_id: int
    ts: float


class Settle(NamedTuple):
    """A database task ended (its end is earlier in the batch): its waiting children move on."""

    task_id: int


Op = NewTask | Transition | TaskUpdate | AllocationWrite | Heartbeat | Settle


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    key: str
    name: str | None
    kind: str
    state: str
    priority: int
    nodes: int
    ranks_per_node: int
    threads_per_rank: int
    cores: int
    gpus: int
    walltime: float | None
    spec: dict[str, Any]
    tags: dict[str, str]
    parents: list[int]
    submitted_by: int | None
    attempt: int
    workdir: str | None
    return_code: int | None
    error_tail: str | None
    result_ref: str | None
    has_result: bool
    has_payload: bool
    session_id: int
    kill_requested: bool
    created_at: float
    updated_at: float
    # database tasks (None for a client's task)
    app: str | None
    app_version: int | None
    function: str | None
    params: dict[str, Any] | None
    args: list[Any] | None
    input_files: list[str] | None
    stage_in: list[dict[str, str]] | None
    stage_out: list[dict[str, str]] | None
    on_parent_failure: str | None
    lease_owner: int | None
    lease_expires: float | None

    @property
    def target(self) -> str | None:
        """What a database task runs: ``app@version`` or the function's import path."""
        return f"{self.app}@{self.app_version}" if self.app else self.function


@dataclass(frozen=True, slots=True)
class AppRecord:
    """An app as stored (see ``appdef.AppDef`` for the fields)."""

    id: int
    name: str
    version: int
    command: str | list[str]
    description: str | None
    defaults: dict[str, Any]
    hooks: dict[str, str]
    created_at: float


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    task_id: int
    attempt: int
    from_state: str | None
    to_state: str
    ts: float
    worker: str | None
    hosts: str | None
    message: str | None
    #: When the task entered ``from_state`` (None for its first event and before schema 0005).
    since: float | None = None


@dataclass(frozen=True, slots=True)
class AllocationRecord:
    id: int
    session_id: int
    system: str
    scheduler_id: str | None
    queue: str | None
    account: str | None
    nodes: int
    walltime: float
    state: str
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    message: str | None
    info: dict[str, Any]
    updated_at: float


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: int
    kind: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    ended_at: float | None
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ShapeBacklog:
    """Tasks of one resource shape by state (what the packing policy reads)."""

    nodes: int
    cores: int
    gpus: int
    walltime: float  # bucket upper bound, seconds; 0 = no estimate
    counts: dict[str, int]

    def count(self, states: frozenset[str] | set[str]) -> int:
        return sum(n for s, n in self.counts.items() if s in states)
