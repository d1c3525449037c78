"""Importable task functions for the benchmarks (serve_throughput.py, peers.py): workers import them."""

from __future__ import annotations

import subprocess


def noop(i: int) -> int:
    return i


def run_true(i: int) -> int:
    """A shell task for systems without one of their own: run ``/bin/true``."""
    subprocess.run(["/bin/true"], check=True)
    return i


def true_command() -> str:
    """A Parsl ``bash_app`` body: the command line it runs."""
    return "/bin/true"
