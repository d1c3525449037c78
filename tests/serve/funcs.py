"""Functions database tasks of the serve tests call by import path (``tests.serve.funcs:square``)."""

from __future__ import annotations


def square(x: int, *, offset: int = 0) -> int:
    return x * x + offset
