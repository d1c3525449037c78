"""Plain Dask tasks take the recorder's fast path: it records exactly what the general path does.

Two BalsamPlugins on one scheduler see the very same transitions; one records through the
fast path (as always), the other has it turned off. Their stores must hold the same rows and
the same history for every task: maps, dependencies, errors, Dask's retries, cancellations,
keys computed again after being forgotten.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import dask
import distributed
import pytest

from balsam_dask import BalsamPlugin, Store


class GeneralPathPlugin(BalsamPlugin):
    """BalsamPlugin recording every transition through ``Recorder.on_transition``."""

    name = "balsam-dask-general-path"

    async def start(self, scheduler: Any) -> None:
        await super().start(scheduler)
        self.recorder.plain_transition = lambda *args: False  # type: ignore[method-assign]


def inc(x: int) -> int:
    return x + 1


def add(*xs: int) -> int:
    return sum(xs)


def fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


_TRIES: dict[str, int] = {}
_TRIES_LOCK = threading.Lock()


def flaky(name: str) -> str:
    """Fails on its first call (per name, in this process), then succeeds."""
    with _TRIES_LOCK:
        _TRIES[name] = _TRIES.get(name, 0) + 1
        first = _TRIES[name] == 1
    if first:
        raise RuntimeError("first try fails")
    return name


def _histories(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Per task key, its row's fields and its events, without ids and times; and the times
    of its RUN_DONE events (the worker's compute end, unless that is later than when the
    scheduler heard of it)."""
    store = Store(url)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        tasks = sorted(store.tasks(limit=None), key=lambda t: t.id)
        by_id = {t.id: t for t in tasks}
        for t in tasks:
            events = store.history(t.id)
            row = (t.kind, t.state, t.attempt, t.error_tail, tuple(by_id[p].key for p in t.parents))
            run_done = [e.ts for e in events if e.to_state == "RUN_DONE"]
            history = [(e.from_state, e.to_state, e.attempt, e.worker, e.hosts, e.message) for e in events]
            out.setdefault(t.key, []).append((row, tuple(history), tuple(run_done)))
        return out
    finally:
        store.close()


def _workload(client: distributed.Client) -> None:
    # a map: queued -> processing
    assert client.gather(client.map(inc, range(200), key=[f"map-{i}" for i in range(200)])) == list(range(1, 201))
    # dependencies: waiting on parents, then processing
    leaves = [client.submit(inc, i, key=f"leaf-{i}") for i in range(20)]
    pairs = [client.submit(add, leaves[i], leaves[i + 1], key=f"pair-{i // 2}") for i in range(0, 20, 2)]
    assert client.submit(add, *pairs, key="total").result() == sum(range(1, 21))
    del leaves, pairs
    # a dask.array graph
    import dask.array as da

    x = da.ones((60, 60), chunks=10)
    assert float(client.compute((x + x.T).sum()).result()) == 7200.0
    # an error, and a task depending on it
    bad = client.submit(fail, 1, key="bad")
    child = client.submit(inc, bad, key="bad-child")
    distributed.wait([bad, child])
    assert bad.status == child.status == "error"
    del bad, child
    # Dask's own retries
    assert client.submit(flaky, "f", key="flaky", retries=1).result() == "f"
    # cancellations: running, and waiting on it
    slow = client.submit(nap, 5.0, key="slow")
    after = client.submit(inc, slow, key="after-slow")
    deadline = time.time() + 30
    while client.processing() and not any("slow" in v for v in client.processing().values()):
        if time.time() > deadline:
            break
        time.sleep(0.02)
    time.sleep(0.1)
    client.cancel([slow, after])
    del slow, after
    # a key computed again once forgotten: a new task
    assert client.submit(inc, 1, key="again").result() == 2
    deadline = time.time() + 30
    while "again" in client.who_has() and time.time() < deadline:
        time.sleep(0.02)
    assert client.submit(inc, 1, key="again").result() == 2


async def _flush(dask_scheduler: Any) -> None:
    for plugin in dask_scheduler.plugins.values():
        if isinstance(plugin, BalsamPlugin):
            assert plugin.writer.flush(60)


@pytest.mark.slow
def test_fast_path_records_what_the_general_path_records(tmp_path: Path) -> None:
    fast_url, general_url = f"sqlite:///{tmp_path}/fast.db", f"sqlite:///{tmp_path}/general.db"
    for url in (fast_url, general_url):  # made here: the plugins start at once, and Alembic is not thread-safe
        Store(url).close()
    fast, general = BalsamPlugin(fast_url), GeneralPathPlugin(general_url)
    with dask.config.set({"distributed.scheduler.validate": True}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None,
                                      scheduler_kwargs={"plugins": [fast, general]}) as cluster:  # fmt: skip
            with distributed.Client(cluster) as client:
                _workload(client)
                time.sleep(0.5)  # the cancelled task's worker reports back
                client.run_on_scheduler(_flush)
    assert not fast.recorder.anomalies and not general.recorder.anomalies
    assert fast.writer.stats.rejected == general.writer.stats.rejected == []
    got, expected = _histories(fast_url), _histories(general_url)
    assert {k: [r[:2] for r in v] for k, v in got.items()} == {k: [r[:2] for r in v] for k, v in expected.items()}
    for key, rows in got.items():
        for (*_, done), (*_, done_general) in zip(rows, expected[key], strict=True):
            assert done == pytest.approx(done_general, abs=0.05), key
    assert len(got) > 250 and len(got["again"]) == 2
    states = {k: [row[0][1] for row in rows] for k, rows in got.items()}
    assert states["bad"] == ["FAILED"] and states["bad-child"] == ["FAILED"] and states["flaky"] == ["FINISHED"]
    assert states["slow"] == ["KILLED"] and states["after-slow"] == ["KILLED"]
    assert any(e[1] == "AWAITING_PARENTS" for e in got["total"][0][1])
    # the live page's counts by state, kept at every state change, are the store's
    with Store(fast_url) as store:
        summary = store.summary()
    for plugin in (fast, general):
        assert {s: n for s, n in plugin.recorder.counts.items() if n} == summary
    assert [f.name for f in fast.recorder.failures.newest()] == ["bad-child", "bad"]
    assert "bad input 1" in fast.recorder.failures.newest()[1].tail
