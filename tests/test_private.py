"""Owner-only directories under any umask: made 0700, existing ones left as they are."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_dask.private import private_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that takes the owner's write bit: private_dir must put it back."""
    old = os.umask(0o277)
    try:
        yield
    finally:
        os.umask(old)


def test_new_directories_are_owner_only_whatever_the_umask(tmp_path: Path, strict_umask: None) -> None:
    one = private_dir(tmp_path / "one")  # one level: the common case
    nested = private_dir(str(tmp_path / "a" / "b" / "c"))  # missing parents too
    assert isinstance(nested, Path) and nested == tmp_path / "a" / "b" / "c"
    assert [mode(p) for p in (one, tmp_path / "a", tmp_path / "a" / "b", nested)] == [0o700] * 4
    (nested / "file").write_text("writable")  # the owner's write bit is back


def test_an_existing_directory_is_left_as_it_is(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    os.chmod(mine, 0o755)
    assert private_dir(mine) == mine and mode(mine) == 0o755


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        private_dir(tmp_path / "f")
    with pytest.raises(NotADirectoryError):  # a file where a parent should be
        private_dir(tmp_path / "f" / "sub")
