"""The scheduler's store writer under faults: killed, it is replaced and nothing is lost or
written twice; a store that cannot be written makes the cluster's close fail, not succeed."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from balsam_dask import Client, LocalEnsembleCluster, Store
from balsam_dask.errors import StoreUnavailable
from tests.clusters import ensemble


def slow(i: int) -> int:
    time.sleep(0.002)
    return i


@pytest.mark.slow
def test_a_killed_writer_is_replaced_and_every_task_recorded_once(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        first = client.map(slow, range(300))
        client.gather(first)
        client.flush()
        pid = client.balsam_status()["writer"]["pid"]
        assert pid is not None
        more = client.map(slow, range(300, 900))
        time.sleep(0.2)  # mid-stream: some of these recorded, some shipped, some queued
        os.kill(pid, signal.SIGKILL)
        assert client.gather(more) == list(range(300, 900))
        client.flush()
        status = client.balsam_status()["writer"]
        assert status["restarts"] == 1 and status["pid"] != pid and status["alive"]
        assert f"pid {pid}" in status["last_error"]
        # flushed: nothing is left but, at times, a heartbeat of the session (every 10 s) in flight
        deadline = time.monotonic() + 10
        while (status["pending"], status["in_flight"]) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
            status = client.balsam_status()["writer"]
        assert status["pending"] == status["in_flight"] == 0
        with Store(cluster.store_url) as store:
            assert store.count(state="FINISHED") == 900
            with store.engine.connect() as conn:
                n, distinct, per_task = conn.execute(text(
                    "SELECT COUNT(*), COUNT(DISTINCT id), COUNT(*) * 1.0 / COUNT(DISTINCT task_id) FROM events"
                )).one()  # fmt: skip
            assert n == distinct and per_task == 4  # CREATED->READY->RUNNING->RUN_DONE->FINISHED, once each


def test_close_fails_when_records_could_not_be_written(tmp_path: Path) -> None:
    db = tmp_path / "balsam.db"
    cluster = LocalEnsembleCluster(nodes=1, cores_per_node=2, store=f"sqlite:///{db}", workdir=tmp_path,
                                   plugin_options={"writer_options": {"close_timeout": 1.0,
                                                                      "backoff_max": 0.05}})  # fmt: skip
    try:
        with Client(cluster) as client:
            assert client.submit(slow, 1).result() == 1
            client.flush()
            lock = sqlite3.connect(db, timeout=0, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")  # the store is locked from now on
            try:
                assert client.submit(slow, 2).result() == 2
                with pytest.raises(StoreUnavailable, match=r"could not write \d+ operations before closing"):
                    cluster.close()
            finally:
                lock.execute("ROLLBACK")
                lock.close()
    finally:
        cluster.close()
