"""Staging on a node: transports chosen by a location's form, retries, records, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from balsam_dask.errors import InvalidSpec, StagingError, TransportUnavailable
from balsam_dask.taskdb.job import Transfer
from balsam_dask.worker import staging
from balsam_dask.worker.staging import (
    CopyTransport,
    RsyncTransport,
    ScpTransport,
    bring_inputs,
    register_transport,
    stage_in,
    stage_out,
    transport_for,
)


def tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("aaaa")
    (root / "sub" / "b.txt").write_text("bb")
    return root


def test_transports_are_chosen_by_the_location_form() -> None:
    assert transport_for("/data/x").name == "copy"
    assert transport_for("rel/x").name == "copy"
    assert transport_for("file:///data/x").name == "copy"
    assert transport_for("login1:/data/x").name == "rsync"
    assert transport_for("rsync://host/module/x").name == "rsync"
    assert transport_for("scp://user@host:2222/data/x").name == "scp"
    with pytest.raises(TransportUnavailable, match=r"no transport for 'globus://ep/x' \(scheme 'globus'\).*"
                                                   r"register_transport\('globus', transport\)"):  # fmt: skip
        transport_for("globus://ep/x")


def test_another_transport_is_registered_by_scheme() -> None:
    class Fake:
        name = "fake"

        def fetch(self, src: str, dest: Path) -> int:
            dest.write_text(src)
            return len(src)

        def push(self, src: Path, dest: str) -> int:
            return 0

    register_transport("fake", Fake())  # in this test process only
    assert transport_for("fake://somewhere/x").name == "fake"
    with pytest.raises(InvalidSpec, match=r"scheme_or_name='a b' is invalid: give a URL scheme"):
        register_transport("a b", Fake())
    with pytest.raises(InvalidSpec, match=r"transport=.* is invalid: give an object with name, fetch"):
        register_transport("x", object())  # type: ignore[arg-type]


def test_copy_fetches_files_directories_and_file_urls(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    wd = tmp_path / "wd"
    copy = CopyTransport()
    assert copy.fetch(str(src / "a.txt"), wd / "in" / "a.txt") == 4
    assert copy.fetch(f"file://{src}", wd / "data") == 6
    assert (wd / "data" / "sub" / "b.txt").read_text() == "bb"
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        copy.fetch(str(src / "missing"), wd / "m")
    with pytest.raises(ValueError, match="is not a local path or a file:///path URL"):
        copy.fetch("file://otherhost/x", wd / "m")


def test_copy_pushes_into_a_directory(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    out = tmp_path / "out"
    assert CopyTransport().push(src / "a.txt", f"{out}/") == 4
    assert (out / "a.txt").read_text() == "aaaa"
    assert CopyTransport().push(src / "a.txt", str(out / "renamed.txt")) == 4
    assert (out / "renamed.txt").exists()


def test_rsync_fetches_a_local_directory_under_another_name_and_pushes(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    wd = tmp_path / "wd"
    wd.mkdir()
    rsync = RsyncTransport()
    assert rsync.fetch(str(src), wd / "copy") == 6
    assert (wd / "copy" / "sub" / "b.txt").read_text() == "bb"
    assert rsync.fetch(str(src), wd / "copy") == 6  # again: replaced, not nested
    assert not (wd / "copy" / "src").exists()
    assert rsync.fetch(str(src / "a.txt"), wd / "one.txt") == 4
    assert [p.name for p in wd.iterdir() if p.name.startswith(".stage-")] == []
    assert rsync.push(wd / "copy", f"{tmp_path}/back/") == 6
    assert (tmp_path / "back" / "copy" / "a.txt").exists()


def test_scp_spells_its_urls() -> None:
    assert ScpTransport().remote("scp://me@host:2222/data/my%20x") == (
        ["-B", "-q", "-r", "-P", "2222"], "me@host:/data/my x")  # fmt: skip
    assert ScpTransport().remote("scp://host/d/") == (["-B", "-q", "-r"], "host:/d/")
    with pytest.raises(ValueError, match="names no host"):
        ScpTransport().remote("scp:///data")


def test_a_missing_tool_is_named_and_not_retried(tmp_path: Path) -> None:
    register_transport("rsync", RsyncTransport(program="no-such-rsync"))
    records: list[Transfer] = []
    try:
        with pytest.raises(StagingError, match=r"stage-in of login1:/d/x .* failed after 1 attempt\(s\): the rsync "
                                               r"transport needs the 'no-such-rsync' command") as info:  # fmt: skip
            stage_in([{"src": "login1:/d/x", "dest": "x"}], tmp_path, 3, records)
    finally:
        register_transport("rsync", RsyncTransport())
    (t,) = info.value.transfers
    assert (t.direction, t.transport, t.attempts, t.ok) == ("in", "rsync", 1, False)


def test_a_failing_item_is_retried_then_fails_with_every_record(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    wd = tmp_path / "wd"
    records: list[Transfer] = []
    items = [{"src": str(src / "a.txt"), "dest": "a.txt"}, {"src": str(src / "gone.txt"), "dest": "gone.txt"}]
    with pytest.raises(StagingError, match=r"stage-in of .*gone.txt to .*wd/gone.txt failed after 3 attempt\(s\): "
                                           r"FileNotFoundError: .*gone.txt does not exist") as info:  # fmt: skip
        stage_in(items, wd, 2, records)
    ok, failed = info.value.transfers
    assert (ok.ok, ok.attempts, ok.nbytes, ok.transport) == (True, 1, 4, "copy")
    assert (failed.ok, failed.attempts, failed.nbytes) == (False, 3, 0)
    assert failed.ended - failed.started >= staging.RETRY_DELAY * 3
    assert records == [ok, failed]


def test_stage_out_sends_matching_files(tmp_path: Path) -> None:
    wd = tree(tmp_path / "wd")
    (wd / "c.txt").write_text("c")
    records: list[Transfer] = []
    stage_out([{"src": "*.txt", "dest": str(tmp_path / "out")}, {"src": "sub/b.txt", "dest": str(tmp_path / "b")}],
              wd, 0, records)  # fmt: skip
    assert sorted(os.listdir(tmp_path / "out")) == ["a.txt", "c.txt"]
    assert (tmp_path / "b").read_text() == "bb"
    assert [(r.direction, r.nbytes, r.ok) for r in records] == [("out", 5, True), ("out", 2, True)]
    with pytest.raises(StagingError, match=r"stage-out of .*wd/\*.h5 to /x failed after 1 attempt\(s\): "
                                           r"'\*.h5' matches no file in"):  # fmt: skip
        stage_out([{"src": "*.h5", "dest": "/x"}], wd, 2, records)


def test_inputs_are_linked_or_copied_at_their_relative_path(tmp_path: Path) -> None:
    parent = tree(tmp_path / "parent")
    for mode in ("link", "copy"):
        wd = tmp_path / mode
        bring_inputs([(7, str(parent), "sub/*.txt"), (7, str(parent), "a.txt")], wd, mode)
        bring_inputs([(7, str(parent), "a.txt")], wd, mode)  # again: replaced
        assert (wd / "sub" / "b.txt").read_text() == "bb"
        assert (wd / "a.txt").is_symlink() == (mode == "link")
    with pytest.raises(StagingError, match=r"input_files: '\*.h5' matches no file of parent task 7 \(in .*parent\)"):
        bring_inputs([(7, str(parent), "*.h5")], tmp_path / "x", "link")
    with pytest.raises(InvalidSpec, match="input_mode='move' is invalid: give link or copy"):
        bring_inputs([], tmp_path / "x", "move")
