"""The protocol between client, scheduler plugin and node-workers: every message name and
its typed record. Pure: no Dask, no database.

Client -> scheduler: a balsam task carries its :class:`~balsam_dask.spec.TaskSpec` in the
task annotation ``SPEC_ANNOTATION`` (as :func:`wire_spec` bytes) and its store parents in
``PARENT_ANNOTATION``. Scheduler -> worker: the plugin adds a :class:`Dispatch` under
``DISPATCH_ANNOTATION`` when it places the task, and sends a :class:`KillRequest` on the
worker's stream. Worker -> scheduler: a :class:`NodeConfig` at registration
(``WorkerState.extra[EXTRA_KEY]``), an :class:`AttemptReport` per failed attempt (a worker
event on ``TOPIC``) and a :class:`DoneReport` in the finished task's metadata.
Scheduler -> client: :class:`ResumeItem` for each durable task to resume.

Bundled dispatch (no Dask task per balsam task): a client sends ``BUNDLE_SUBMIT_OP`` on its
stream with :class:`BundledCall` items; the plugin places them and sends each node one
``BUNDLE_OP`` message per placement round (:class:`BundledTask` items); the node's executor
runs them and sends back ``BUNDLE_REPORTS_OP`` batches (:class:`BundleReport`: each task's
start, failed attempts, end with its result); the plugin records them and sends the owner
``BUNDLE_RESULTS_OP`` batches (:class:`BundledOutcome`). ``BUNDLE_UNQUEUE_OP`` takes queued,
unstarted tasks back from a node.
"""

from __future__ import annotations

import functools
import json
import pickle
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple, TypedDict

from balsam_dask import validate
from balsam_dask.errors import InvalidSpec
from balsam_dask.spec import TaskSpec, check_bind

#: Topic of the worker -> scheduler events (attempt reports) and key of the done report in a
#: finished task's metadata.
TOPIC = "balsam-task"
#: Task annotations: the spec (client), the store parents (client), the dispatch (scheduler).
SPEC_ANNOTATION = "balsam"
PARENT_ANNOTATION = "balsam_parent"
DISPATCH_ANNOTATION = "balsam_dispatch"
#: Stream operation the scheduler sends a node-worker to stop running tasks.
KILL_OP = "balsam_kill"
#: Kill reason that sends a task back for placement again (a node of its gang was lost): the
#: worker releases it cleanly through Dask's ``Reschedule``.
RESCHEDULE_REASON = "reschedule"
#: Bundled dispatch: client -> scheduler, scheduler -> node, node -> scheduler, scheduler -> client,
#: scheduler -> node (take queued tasks back).
BUNDLE_SUBMIT_OP = "balsam_bundle_submit"
BUNDLE_OP = "balsam_bundle"
BUNDLE_REPORTS_OP = "balsam_bundle_reports"
BUNDLE_RESULTS_OP = "balsam_bundle_results"
BUNDLE_UNQUEUE_OP = "balsam_bundle_unqueue"
#: Environment variable holding a node-worker's :meth:`NodeConfig.to_env`.
ENV_VAR = "BALSAM_DASK_NODE"
#: Key under which workers report their NodeConfig (``WorkerState.extra[EXTRA_KEY]``).
EXTRA_KEY = "balsam"
#: The Dask preload that makes a worker a node-worker.
PRELOAD = "balsam_dask.worker_setup"
#: Dask worker resource counting a node-worker's cores. Every balsam task dispatched to the
#: node asks for its cores, so the worker starts a task the scheduler queued there
#: (prefetch) only when that many cores are free, exactly as the placer accounts them.
CORES_RESOURCE = "BALSAM_CORES"
#: Batching interval (s) of the scheduler's and node-workers' streams (Dask's is 2-5 ms).
STREAM_INTERVAL = 0.0005


class Dispatch(TypedDict):
    """Where and how the plugin placed one attempt of a balsam task."""

    attempt: int
    gpus: tuple[str, ...]  # GPU ids on the leader node
    hosts: tuple[str, ...]  # host names of the task's nodes, leader first (MPI launchers use them)
    workers: tuple[str, ...]  # worker addresses of those nodes
    task_id: int  # the task's id in the store


class KillRequest(TypedDict):
    op: str  # KILL_OP
    keys: list[str]
    reason: str


class Launch(TypedDict, total=False):
    """What an attempt launched, for the record."""

    command: str
    workdir: str
    return_code: int


class AttemptReport(Launch, total=False):
    """A failed or timed-out attempt."""

    op: Literal["attempt"]
    key: str
    attempt: int
    kind: Literal["error", "timeout"]
    retry: bool  # another attempt follows
    message: str
    ts: float
    error_tail: str


class DoneReport(Launch, total=False):
    """A finished attempt: when, where, and a durable task's result (inline or by file)."""

    op: Literal["done"]
    key: str
    attempt: int
    ts: float
    started: float
    node: str
    gpus: list[str]
    message: str  # why the result was not stored
    result: bytes  # the pickled result, up to the inline limit
    result_ref: str  # else the file holding it
    result_digest: bytes  # and that file's SHA-256


class BundledCall(TypedDict, total=False):
    """One bundled task as its owner submits it: its key, spec (``wire_spec``), priority and
    what to run: ``fn`` (an id into the message's pickled functions) with pickled ``args``
    (a ``(args, kwargs)`` pair), or ``job`` (a database task's ``DbJob`` fields)."""

    key: str
    spec: bytes
    priority: int
    fn: str
    args: bytes
    job: dict[str, Any]


class BundledTask(BundledCall, total=False):
    """One bundled task as a node receives it: the call and its :class:`Dispatch`."""

    dispatch: Dispatch


class BundleReport(Launch, total=False):
    """What a node's executor says of one bundled task: ``start`` (its first attempt began),
    ``attempt`` (an :class:`AttemptReport`'s fields: a failed attempt), ``end`` (``status``
    "ok" with the pickled ``value`` and the :class:`DoneReport` fields (``stored``: the
    value is also the stored result, sent once, not again as ``done["result"]``), "error" with the
    pickled ``error`` and its text, or "killed"), ``unqueued``/``kept`` (answers to
    ``BUNDLE_UNQUEUE_OP``: given back unstarted, or already started)."""

    op: Literal["start", "attempt", "end", "unqueued", "kept"]
    key: str
    ts: float
    attempt: int
    status: Literal["ok", "error", "killed"]
    value: bytes
    stored: bool
    error: bytes
    text: str
    traceback: str
    done: dict[str, Any]  # the DoneReport's fields
    # AttemptReport's fields, for op "attempt"
    kind: Literal["error", "timeout"]
    retry: bool
    message: str
    error_tail: str


class BundledOutcome(TypedDict, total=False):
    """A bundled task's end as its owner learns it: ``status`` "ok" (``value``: pickled),
    "error" (``error``: the pickled exception, ``text``), "killed" (``text``: why)."""

    key: str
    status: Literal["ok", "error", "killed"]
    value: bytes
    error: bytes
    text: str


class ResumeItem(TypedDict):
    """A durable task claimed for resuming, with what its graph needs."""

    key: str
    task_id: int
    state: str
    attempt: int
    payload: bytes
    data: dict[str, dict[str, Any]]  # finished parents' keys -> {"task_id", "result"}
    parents: list[int]  # claimed parents (resumed with it)


class LostReason(NamedTuple):
    """Why a running attempt was lost; ``walltime``: it ended with its allocation (the record
    shows RUN_TIMEOUT before RESTART_READY)."""

    text: str
    walltime: bool = False


def wire_spec(spec: TaskSpec) -> bytes:
    """The spec as it travels to workers in a task's annotations: bytes, which msgpack sends as
    they are (a TaskSpec object would make Dask try msgpack, fail, log and pickle it per task)."""
    return pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)


@functools.lru_cache(maxsize=256)
def _unwire_spec(data: bytes) -> TaskSpec:
    spec = pickle.loads(data)
    assert isinstance(spec, TaskSpec)
    return spec


def task_spec(value: Any) -> TaskSpec:
    """The spec of a task's annotation, in either form (bytes on workers, an object in graphs)."""
    if isinstance(value, bytes):
        return _unwire_spec(value)
    return value if isinstance(value, TaskSpec) else TaskSpec()


@dataclass(frozen=True)
class NodeConfig:
    name: str
    alloc_id: str
    cores: int
    gpus: int = 0
    gpu_ids: tuple[str, ...] = ()
    end_time: float | None = None  # allocation end, epoch seconds
    host: str | None = None  # the host name MPI launchers use for this node
    workdir_root: str = "balsam_workdirs"
    results_dir: str = "balsam_results"
    launcher: str | None = None  # the MPI launcher for this allocation (None: detect)
    bind: str | None = None  # MPI rank binding on this allocation's nodes (spec.BIND_CHOICES)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidSpec(f"node name {self.name!r} is invalid: give a non-empty string such as 'node-0'")
        if not isinstance(self.alloc_id, str) or not self.alloc_id:
            raise InvalidSpec(f"alloc_id {self.alloc_id!r} is invalid: give a string such as 'local-1'")
        validate.integer("cores", self.cores, "cores=4", 1)
        validate.integer("gpus", self.gpus, "gpus=4", 0)
        ids = tuple(str(i) for i in self.gpu_ids) or tuple(str(i) for i in range(self.gpus))
        if len(ids) != self.gpus or len(set(ids)) != len(ids):
            raise InvalidSpec(f"gpu_ids={self.gpu_ids!r} do not match gpus={self.gpus}: give {self.gpus} distinct ids")
        object.__setattr__(self, "gpu_ids", ids)
        check_bind(self.bind)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpu_ids"] = list(self.gpu_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "gpu_ids" in known:
            known["gpu_ids"] = tuple(known["gpu_ids"])
        return cls(**known)

    def to_env(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_env(cls, text: str) -> NodeConfig:
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidSpec(f"${ENV_VAR}={text!r} is not JSON; it is written by NodeConfig.to_env()") from None
        if not isinstance(data, dict):
            raise InvalidSpec(f"${ENV_VAR}={text!r} is not a JSON object")
        return cls.from_dict(data)
