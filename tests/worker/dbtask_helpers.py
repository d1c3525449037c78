"""Functions and hooks that database tasks in tests/worker/test_dbtask.py name by import path
(the node-workers import this module: the worktree is on their PYTHONPATH)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from balsam_dask.worker.dbtask import HookContext


def add(a: int, b: int, scale: int = 1) -> int:
    return (a + b) * scale


def where_am_i() -> str:
    return os.getcwd()


def fail_unless_fixed(fixed: bool = False) -> str:
    if not fixed:
        raise ValueError("not fixed yet")
    return "fixed"


def sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def double_n(ctx: HookContext) -> None:
    """pre: the task runs with n doubled, and leaves a mark in its work directory."""
    ctx.params["n"] = ctx.params["n"] * 2
    (ctx.workdir / "pre-ran").write_text(str(ctx.attempt))


def spawn_children(ctx: HookContext) -> None:
    """post: one child per line of the app's output."""
    out = Path(ctx.result.stdout_path).read_text().split()
    ctx.add_tasks({"app": "child", "params": {"x": x}, "parents": [ctx.task_id]} for x in out)


def fix_it(ctx: HookContext) -> Any:
    """error: restart once with fixed=True."""
    assert isinstance(ctx.error, ValueError)
    return {"params": {"fixed": True}}


def give_up(ctx: HookContext) -> str:
    return "fail"


def broken(ctx: HookContext) -> None:
    raise RuntimeError("hook is broken")


def say_maybe(ctx: HookContext) -> str:
    return "maybe"
