"""Unmodified executables as tasks: what is submitted and what comes back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AppResult:
    """The outcome of an application run (``client.submit_app``)."""

    command: tuple[str, ...]
    returncode: int
    duration: float
    started_at: float
    ended_at: float
    workdir: Path
    stdout_path: Path
    stderr_path: Path
    stdout_tail: str
    stderr_tail: str
    gpu_ids: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def stdout(self) -> str:
        """The whole captured stdout."""
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")
