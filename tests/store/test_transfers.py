"""Transfers of database tasks recorded and read back (SQLite and PostgreSQL), and shown."""

from __future__ import annotations

import pytest

from balsam_dask.cli import main
from balsam_dask.errors import StoreReadOnly
from balsam_dask.store import Store
from balsam_dask.store.transfers import record_transfers, transfers_of
from balsam_dask.taskdb.job import Transfer


def _transfers() -> list[Transfer]:
    return [
        Transfer("in", "login1:/data/in.h5", "/w/sim-1/in.h5", "rsync", 1, True, None, 100.0, 101.5, 2**40),
        Transfer("out", "/w/sim-1/*.out", "/project/res/", "copy", 3, False, "FileNotFoundError: gone", 102.0, 103.0),
    ]


def test_transfers_are_recorded_and_read_back(store: Store) -> None:
    (tid,) = store.add_tasks([{"function": "mypkg.tasks:sim", "params": {"n": 1}}])
    assert transfers_of(store, tid) == []
    assert record_transfers(store, tid, _transfers()) == 2
    assert record_transfers(store, tid, []) == 0
    assert transfers_of(store, tid) == _transfers()  # in order, every field (a 1 TiB file's bytes too)
    assert transfers_of(store, tid + 1) == []
    assert store.remove_tasks(ids=[tid]).done == 1  # removing a task removes its transfers
    assert transfers_of(store, tid) == []


def test_a_read_only_store_refuses_them(store_url: str) -> None:
    with Store(store_url) as s:
        (tid,) = s.add_tasks([{"function": "mypkg.tasks:sim"}])
    with Store(store_url, read_only=True) as ro:
        with pytest.raises(StoreReadOnly, match="opened read-only"):
            record_transfers(ro, tid, _transfers())


def test_show_lists_a_tasks_transfers(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Store(store_url) as s:
        (tid,) = s.add_tasks([{"function": "mypkg.tasks:sim"}])
        record_transfers(s, tid, _transfers())
    assert main(["--store", store_url, "show", str(tid)]) == 0
    out = capsys.readouterr().out
    header, first, second = out.splitlines()[-3:]
    assert header.split()[:8] == ["STARTED", "DIR", "TRANSPORT", "SRC", "DEST", "ATTEMPTS", "OUTCOME", "BYTES"]
    assert first.split()[2:9] == ["in", "rsync", "login1:/data/in.h5", "/w/sim-1/in.h5", "1", "ok", str(2**40)]
    assert second.split()[2:] == ["out", "copy", "/w/sim-1/*.out", "/project/res/", "3", "FAILED", "0", "1.0",
                                  "FileNotFoundError:", "gone"]  # fmt: skip
