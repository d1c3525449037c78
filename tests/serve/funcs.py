"""Functions database tasks of the serve tests call by import path (``tests.serve.funcs:square``)."""

from __future__ import annotations

import os


def where_am_i() -> str:
    """The directory the function runs in: its task's own when isolated (a process of its own)."""
    return os.getcwd()


def square(x: int, *, offset: int = 0) -> int:
    return x * x + offset


def spawn_children(ctx) -> None:  # type: ignore[no-untyped-def]
    """A ``post`` hook: one child task per word its task wrote (a dynamic workflow)."""
    for word in (ctx.workdir / "out.txt").read_text().split():
        ctx.add_task({"app": "echo", "name": f"child-{word}", "params": {"text": word}, "parents": [ctx.task_id]})
