"""Entry point of the fake batch commands: ``fakecmd.py <command> <args>`` (see :mod:`tests.fakes.fakebatch`)."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for ``tests.fakes``
    from tests.fakes import fakebatch

    sys.exit(fakebatch.main(sys.argv[1:]))
