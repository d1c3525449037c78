"""Entry point that runs a pickled Python call in a process of its own.

    python -m balsam_dask.worker.pyrun CALL.pkl OUT.pkl

``CALL.pkl`` holds ``(fn, args, kwargs)`` or ``(fn, args, kwargs, task context)`` (cloudpickle;
the context makes ``balsam_dask.current_task()`` work in the function). The outcome goes to ``OUT.pkl`` as
``("ok", value)`` or ``("err", exception, traceback_text)``; the exit code is 0 on success
and 1 on an exception. Used for isolated functions (own process group, killable, timeouts).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import traceback
from typing import Any

import cloudpickle


def write_outcome(path: str, outcome: tuple[Any, ...]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        try:
            cloudpickle.dump(outcome, f)
        except Exception as e:  # the value or exception does not pickle
            f.seek(0)
            f.truncate()
            err = RuntimeError(f"the task's outcome could not be pickled: {type(e).__name__}: {e}")
            cloudpickle.dump(("err", err, traceback.format_exc()), f)
    os.replace(tmp, path)


async def _wait(value: Any) -> Any:
    return await value


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m balsam_dask.worker.pyrun CALL.pkl OUT.pkl", file=sys.stderr)
        return 2
    call_path, out_path = argv
    with open(call_path, "rb") as f:
        fn, args, kwargs, *ctx = cloudpickle.load(f)
    if ctx:
        from balsam_dask.worker.context import set_current

        set_current(ctx[0])
    try:
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):  # an async def function
            value = asyncio.run(_wait(value))
    except BaseException as e:
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        write_outcome(out_path, ("err", e, tb))
        return 1
    write_outcome(out_path, ("ok", value))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
