"""A finished durable task whose result is lost with its worker comes back from the store."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from distributed import wait

from balsam_dask import Store
from tests.clusters import ensemble


def record(i: int, log: str) -> int:
    """A task with a side effect: it appends its input to ``log`` each time it runs."""
    with open(log, "a") as fh:
        fh.write(f"{i}\n")
    return i * i


def test_lost_results_are_restored_not_run_again(store_url: str, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    with ensemble(store_url, tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        futures = client.map(record, range(14), log=str(log), pure=False)
        plain = client.map(record, range(100, 104), log=str(log), pure=False, durable=False)
        wait(futures + plain)
        who = client.who_has(futures + plain)
        held = Counter(w for ws in who.values() for w in ws)
        victim = held.most_common(1)[0][0]
        lost = [f for f in futures if victim in who[f.key]]
        lost_plain = [f for f in plain if victim in who[f.key]]
        assert lost
        name = client.scheduler_info()["workers"][victim]["name"]
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 30
        while victim in client.scheduler_info()["workers"]:
            assert time.time() < deadline, "the scheduler never noticed the dead worker"
            time.sleep(0.05)

        assert client.gather(futures) == [i * i for i in range(14)]
        assert client.gather(plain) == [i * i for i in range(100, 104)]
        client.flush()
        runs = Counter(log.read_text().split())
        assert {i: runs[str(i)] for i in range(14)} == {i: 1 for i in range(14)}  # none ran twice
        for f in lost_plain:  # a task that is not durable has no stored result: it runs again
            assert runs[str(100 + plain.index(f))] == 2
        with Store(cluster.store_url) as store:
            for f in lost:
                (t,) = store.tasks(key=f.key)
                assert t.state == "FINISHED"
                events = store.history(t.id)
                assert [e.to_state for e in events].count("RUNNING") == 1, f.key
                last = events[-1]
                assert (last.from_state, last.to_state) == ("FINISHED", "FINISHED")
                assert last.message == f"result restored from the store (lost with {name})"
