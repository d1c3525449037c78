"""Importable no-op functions for benchmarks/serve_throughput.py's function tasks."""

from __future__ import annotations


def noop(i: int) -> int:
    return i
