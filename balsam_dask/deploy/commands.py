"""The one place the ensemble clusters run batch-system commands (submit, status, shrink,
cancel): asynchronously, never through a shell, output captured."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    out: str
    err: str

    def problem(self) -> str | None:
        """None if the command succeeded; else one line saying how it failed."""
        if self.returncode == 0:
            return None
        said = (self.err.strip() or self.out.strip())[:500]
        return f"{' '.join(self.argv)} exited {self.returncode}: {said}"


async def run_command(argv: list[str], *, stdin_file: str | None = None) -> Completed:
    """Run ``argv`` (with ``stdin_file`` as its standard input); a command that cannot be
    started is a ``Completed`` with return code 127 and the reason as its error."""
    log.debug("balsam_dask: running %s", argv)
    try:
        if stdin_file is None:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
        else:
            with open(stdin_file, "rb") as fh:
                proc = await asyncio.create_subprocess_exec(*argv, stdin=fh, stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.PIPE)  # fmt: skip
                out, err = await proc.communicate()
    except OSError as e:
        return Completed(tuple(argv), 127, "", f"{argv[0]}: {e.strerror or e}")
    assert proc.returncode is not None
    return Completed(tuple(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
