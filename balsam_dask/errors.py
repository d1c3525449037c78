"""Errors raised by balsam_dask.

Every error derives from :class:`BalsamDaskError`; most also derive from the matching
builtin so callers can catch either. Messages name the bad value and show a correct form.

Errors cross process boundaries (worker -> scheduler -> client), so each subclass passes
every constructor argument positionally to ``super().__init__``: pickling re-creates the
exception from ``self.args``.
"""

from __future__ import annotations


class BalsamDaskError(Exception):
    """Root of every error raised by balsam_dask."""


class InvalidSpec(BalsamDaskError, ValueError):
    """A task or resource specification is malformed or cannot fit any node."""


class InvalidTaskRow(InvalidSpec):
    """A row of a bulk task submission (``Store.add_tasks``, ``balsam-dask submit --file``) is
    invalid: ``where`` names the row (``tasks.yaml line 12``), ``field`` the field at fault."""

    def __init__(self, where: str, field: str, reason: str, index: int = -1) -> None:
        super().__init__(where, field, reason, index)
        self.where = where
        self.field = field
        self.reason = reason
        self.index = index  # the row's position in the batch, from 0

    def __str__(self) -> str:
        return f"{self.where}, field {self.field!r}: {self.reason}; nothing was written"


class InvalidSiteConfig(InvalidSpec):
    """A site's configuration (``site.yaml``, ``balsam-dask site``) is invalid: ``where`` names
    the file, ``key`` the key path at fault (``batch.queue``; empty for the whole file)."""

    def __init__(self, where: str, key: str, reason: str) -> None:
        super().__init__(where, key, reason)
        self.where = where
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class UnpicklableArgument(InvalidSpec, TypeError):
    """An argument of a task cannot be serialized to travel to the workers."""


class InvalidTags(InvalidSpec):
    """Tags are not a mapping of short strings to scalars."""


class StoreError(BalsamDaskError):
    """The provenance store cannot be used."""


class InvalidStoreURL(StoreError, ValueError):
    """The store URL is malformed or names an unsupported database."""


class StoreUnavailable(StoreError, ConnectionError):
    """The store's database server does not answer."""


class SchemaTooNew(StoreError):
    """The store was created by a newer balsam_dask; refusing to misread it."""


class SchemaMissing(StoreError):
    """The store has no balsam_dask schema yet (run ``balsam-dask init``)."""


class StoreReadOnly(StoreError, PermissionError):
    """A write to a store this process cannot (or chose not to) write."""


class KeyFileError(StoreError):
    """The key that signs the store's pickles cannot be read, made, or trusted."""


class UntrustedData(BalsamDaskError, ValueError):
    """A stored payload or result whose signature is missing or wrong: it is not unpickled."""

    def __init__(self, task_id: int, what: str) -> None:
        super().__init__(task_id, what)
        self.task_id = task_id
        self.what = what

    def __str__(self) -> str:
        return f"task {self.task_id}: {self.what}; refusing to unpickle it"


class WrongKey(UntrustedData):
    """Stored data signed with another key than this process has: resume with that key."""


class IllegalTransition(BalsamDaskError, ValueError):
    """A task state change that the state machine forbids. ``allowed``: the states the task
    may go to from ``from_state`` (given by the state machine, store/states.py)."""

    def __init__(self, from_state: str | None, to_state: str, task_id: int | None = None,
                 allowed: tuple[str, ...] = (), unknown: str | None = None) -> None:  # fmt: skip
        super().__init__(from_state, to_state, task_id, allowed, unknown)
        self.from_state = from_state
        self.to_state = to_state
        self.task_id = task_id
        self.allowed = allowed  # with ``unknown``: every state there is
        self.unknown = unknown  # a state that is no state at all

    def __str__(self) -> str:
        where = f" for task {self.task_id}" if self.task_id is not None else ""
        if self.unknown is not None:
            return f"unknown state {self.unknown!r}{where}; states are: {', '.join(self.allowed)}"
        allowed = ", ".join(sorted(self.allowed)) or "none (final state)"
        return (
            f"illegal transition {self.from_state} -> {self.to_state}{where}; "
            f"from {self.from_state} the allowed states are: {allowed}"
        )


class UnknownTask(BalsamDaskError, KeyError):
    """No task with this id (or key) exists in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown task"


class UnknownApp(BalsamDaskError, KeyError):
    """No app of this name (or version) in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown app"


class AppError(BalsamDaskError, RuntimeError):
    """An application (executable) task exited with a non-zero return code."""

    def __init__(self, command: str, returncode: int, stderr_tail: str = "", workdir: str = "", hint: str = "") -> None:
        super().__init__(command, returncode, stderr_tail, workdir, hint)
        self.command = command
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.workdir = workdir
        self.hint = hint  # a likely cause found after the failure (e.g. a mismatched MPI launcher)

    def __str__(self) -> str:
        tail = f"\n--- stderr tail ---\n{self.stderr_tail}" if self.stderr_tail else ""
        hint = f"\n{self.hint}" if self.hint else ""
        return (
            f"command {self.command!r} exited with return code {self.returncode} (workdir {self.workdir}){hint}{tail}"
        )


class TaskTimeout(BalsamDaskError, TimeoutError):
    """A task ran longer than its ``timeout`` and every allowed restart was used."""

    def __init__(self, what: str, timeout: float, attempts: int) -> None:
        super().__init__(what, timeout, attempts)
        self.what = what
        self.timeout = timeout
        self.attempts = attempts

    def __reduce__(self) -> tuple[type[TaskTimeout], tuple[str, float, int], dict[str, object]]:
        # OSError (TimeoutError's base) folds three args into errno/strerror/filename; the
        # state keeps attributes set later (a database task's ``transfers``)
        return (type(self), (self.what, self.timeout, self.attempts), self.__dict__)

    def __str__(self) -> str:
        return f"{self.what} exceeded timeout={self.timeout:g}s on each of {self.attempts} attempt(s)"


class TaskKilled(BalsamDaskError, RuntimeError):
    """A task was killed on request (``client.kill`` or ``future.cancel``)."""


class FunctionLoadError(BalsamDaskError, RuntimeError):
    """A task's function, sent pickled by value, could not be unpickled where it runs (a module
    it uses is missing there, or differs)."""


class MPITaskError(BalsamDaskError, RuntimeError):
    """A Python function run under MPI raised on one of its ranks."""

    def __init__(self, rank: int, exc_type: str, message: str, traceback_text: str) -> None:
        super().__init__(rank, exc_type, message, traceback_text)
        self.rank = rank
        self.exc_type = exc_type
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"rank {self.rank} raised {self.exc_type}: {self.message}\n{self.traceback_text}"


class StagingError(BalsamDaskError, RuntimeError):
    """A database task's data could not be brought in or sent out (an input file, a stage-in or
    stage-out item): ``transfers`` holds every transfer made so far (``taskdb.job.Transfer``),
    the failed one last, for the record. Not retried by the task's own retries."""

    def __init__(self, message: str, transfers: tuple[object, ...] = ()) -> None:
        super().__init__(message, transfers)
        self.message = message
        self.transfers = transfers

    def __str__(self) -> str:
        return self.message


class TransportUnavailable(BalsamDaskError, RuntimeError):
    """A staging transport cannot run on this node (its command is not installed): no retry helps."""


class HookError(BalsamDaskError, RuntimeError):
    """A database task's hook (``pre``, ``post``, ``error``, ``timeout``) raised or returned
    something it may not: the task fails, naming the hook."""

    def __init__(self, hook: str, path: str, reason: str) -> None:
        super().__init__(hook, path, reason)
        self.hook = hook
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"the {self.hook} hook {self.path} {self.reason}"


class LauncherError(InvalidSpec):
    """An MPI launcher is unknown or cannot express the requested layout."""


class AllocationError(BalsamDaskError, RuntimeError):
    """A batch allocation could not be submitted, watched or cancelled."""
