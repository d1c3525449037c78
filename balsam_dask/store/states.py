"""The task state machine: one table of allowed transitions. Pure; no I/O.
(The diagram is in docs/ARCHITECTURE.md.)
"""

from __future__ import annotations

from enum import Enum

from balsam_dask.errors import IllegalTransition


class State(str, Enum):
    CREATED = "CREATED"
    AWAITING_PARENTS = "AWAITING_PARENTS"
    READY = "READY"
    RUNNING = "RUNNING"
    RUN_DONE = "RUN_DONE"
    RUN_ERROR = "RUN_ERROR"
    RUN_TIMEOUT = "RUN_TIMEOUT"
    RESTART_READY = "RESTART_READY"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    def __str__(self) -> str:
        return self.value


S = State
ALL_STATES: tuple[str, ...] = tuple(s.value for s in State)

#: The whole state machine. ``None`` is "no task yet": a task is born CREATED.
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({S.CREATED}),
    S.CREATED: frozenset({S.AWAITING_PARENTS, S.READY, S.FAILED, S.KILLED}),
    S.AWAITING_PARENTS: frozenset({S.READY, S.FAILED, S.KILLED}),
    S.READY: frozenset({S.RUNNING, S.AWAITING_PARENTS, S.FAILED, S.KILLED}),
    S.RUNNING: frozenset({S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT, S.RESTART_READY, S.FAILED, S.KILLED}),
    S.RUN_DONE: frozenset({S.FINISHED, S.RESTART_READY, S.KILLED}),
    S.RUN_ERROR: frozenset({S.RESTART_READY, S.FAILED, S.KILLED}),
    S.RUN_TIMEOUT: frozenset({S.RESTART_READY, S.FAILED, S.KILLED}),
    S.RESTART_READY: frozenset({S.RUNNING, S.AWAITING_PARENTS, S.READY, S.FAILED, S.KILLED}),
    S.FINISHED: frozenset({S.RESTART_READY, S.FINISHED}),
    S.FAILED: frozenset({S.RESTART_READY}),
    S.KILLED: frozenset(),
}
# Enum members are str subclasses: the plain strings look up the same entries.
LEGAL: dict[str | None, frozenset[str]] = {
    (k.value if isinstance(k, State) else k): frozenset(str(v) for v in vs) for k, vs in TRANSITIONS.items()
}

#: Waiting to run: what the packing policy sizes allocations for.
BACKLOG_STATES: frozenset[str] = frozenset(
    {S.CREATED.value, S.AWAITING_PARENTS.value, S.READY.value, S.RESTART_READY.value}
)
#: Runnable now (dependencies satisfied).
RUNNABLE_STATES: frozenset[str] = frozenset({S.READY.value, S.RESTART_READY.value})
#: Holding resources on a node.
ACTIVE_STATES: frozenset[str] = frozenset({S.RUNNING.value, S.RUN_DONE.value, S.RUN_ERROR.value, S.RUN_TIMEOUT.value})
FINAL_STATES: frozenset[str] = frozenset({S.FINISHED.value, S.FAILED.value, S.KILLED.value})
UNFINISHED_STATES: frozenset[str] = frozenset(ALL_STATES) - FINAL_STATES


#: An allocation (batch job) while it may still provide nodes, and once it has ended.
ALLOCATION_LIVE: tuple[str, ...] = ("PENDING", "QUEUED", "RUNNING")
ALLOCATION_ENDED: tuple[str, ...] = ("FINISHED", "CANCELLED", "TIMEOUT", "FAILED", "SUBMIT_FAILED")


def allowed_from(state: str | None) -> frozenset[str]:
    """The states reachable in one step from ``state`` (none for an unknown state)."""
    return LEGAL.get(state, frozenset())


def is_legal(from_state: str | None, to_state: str) -> bool:
    allowed = LEGAL.get(from_state)
    return allowed is not None and to_state in allowed


def check_transition(from_state: str | None, to_state: str, task_id: int | None = None) -> None:
    """Raise :class:`IllegalTransition` unless ``from_state -> to_state`` is allowed."""
    if not is_legal(from_state, to_state):
        raise illegal(from_state, to_state, task_id)


def illegal(from_state: str | None, to_state: str, task_id: int | None = None) -> IllegalTransition:
    """The error for a forbidden change, saying what is allowed (or that a state is unknown)."""
    for state in (from_state, to_state):
        if state is not None and state not in ALL_STATES:
            return IllegalTransition(from_state, to_state, task_id, ALL_STATES, unknown=state)
    return IllegalTransition(from_state, to_state, task_id, tuple(sorted(allowed_from(from_state))))
