"""Dask's asynchronous side: asynchronous clients, submits from the event loop, tasks that
submit tasks, and real libraries that drive the client from callbacks (joblib, scikit-learn)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from dask._task_spec import Task
from distributed import get_client, rejoin, secede, worker_client

from balsam_dask import Client, InvalidSpec, LocalEnsembleCluster, Store, TaskSpec
from balsam_dask.payload import dump_payload
from balsam_dask.spec import Resources
from balsam_dask.store.ops import NewTask
from tests.clusters import ensemble


def square(x: int) -> int:
    return x * x


def _on_loop(client: Client, fn: object) -> object:
    """Run ``fn()`` on the client's event loop thread and return what it returned."""
    out: dict[str, object] = {}
    done = threading.Event()

    def call() -> None:
        try:
            out["value"] = fn()  # type: ignore[operator]
        except BaseException as e:
            out["error"] = e
        done.set()

    client.loop.add_callback(call)
    assert done.wait(30), "the event loop never ran the callback"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]


@pytest.mark.timeout(120)
def test_gridsearch_under_joblib_dask_backend_on_a_cold_client(tmp_path: Path) -> None:
    """joblib's dask backend submits from callbacks on the event loop: this hung forever."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = load_digits(return_X_y=True)
    with ensemble(f"sqlite:///{tmp_path}/balsam.db", tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        search = GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.01, 0.1, 1.0, 10.0]}, cv=3)
        with joblib.parallel_backend("dask"):
            search.fit(X[:600] / 16.0, y[:600])
        assert search.best_score_ > 0.8
        client.flush()
        with Store(cluster.store_url) as store:
            assert store.count(state="FINISHED") >= 12  # 4 candidates x 3 folds, at least


def test_submits_from_the_event_loop_thread(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    fut = _on_loop(client, lambda: client.submit(square, 7, cores=2, pure=False))
    assert fut.result(timeout=30) == 49  # type: ignore[attr-defined]
    futs = _on_loop(client, lambda: client.map(square, range(4), cores=1, pure=False))
    assert client.gather(futs) == [0, 1, 4, 9]
    app = _on_loop(client, lambda: client.submit_app(["echo", "from the loop"]))
    assert app.result(timeout=30).stdout_tail == "from the loop"  # type: ignore[attr-defined]
    # a call on the loop poisons nothing: a plain synchronous submit right after works
    assert client.submit(square, 3, cores=1, pure=False).result(timeout=30) == 9


def test_bad_resources_are_refused_on_the_event_loop_too(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    with pytest.raises(InvalidSpec, match="cores=64, gpus=0 cannot run on any node"):
        _on_loop(client, lambda: client.submit(square, 1, cores=64))
    assert client.submit(square, 2, cores=1, pure=False).result(timeout=30) == 4


def test_asynchronous_client(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, _ = ens

    async def main() -> None:
        async with Client(cluster.scheduler_address, asynchronous=True) as client:
            assert await client.submit(square, 5, cores=2, pure=False) == 25
            futs = client.map(square, range(6), cores=1, tags={"mode": "async"})
            assert await client.gather(futs) == [i * i for i in range(6)]
            app = await client.submit_app("echo {word}", {"word": "async app"}, name="async-app")
            assert app.stdout_tail == "async app"
            with pytest.raises(InvalidSpec, match="cannot run on any node"):
                client.submit(square, 1, cores=64)
            slow = client.submit(time.sleep, 30, cores=1, tags={"mode": "kill-me"}, pure=False)
            while (await client.balsam_status())["running"] == 0:
                await asyncio.sleep(0.05)
            assert await client.kill(tags={"mode": "kill-me"}) == [slow.key]
            await client.flush()
            status = await client.balsam_status()
            assert not status["errors"] and not status["anomalies"]
            assert await client.resume() == {}  # nothing of a dead session to take over

    asyncio.run(main())
    with Store(cluster.store_url) as store:
        assert store.count(tags={"mode": "async"}, state="FINISHED") == 6
        assert store.count(tags={"mode": "kill-me"}, state="KILLED") == 1


def test_asynchronous_resume(store_url: str, tmp_path: Path) -> None:
    """``await client.resume()`` takes over the durable tasks a dead session left."""
    spec = TaskSpec(resources=Resources.serial(1), name="orphan")
    with Store(store_url) as old:  # a session that ended with two tasks never run
        keys = [f"orphan-{i}" for i in range(2)]
        old.apply([NewTask(old.new_id(), k, spec, payload=dump_payload(spec, Task(k, square, i + 3)))
                   for i, k in enumerate(keys)])  # fmt: skip

    with ensemble(store_url, tmp_path, nodes=1, cores_per_node=2) as (cluster, _):

        async def main() -> dict[object, int]:
            async with Client(cluster.scheduler_address, asynchronous=True) as client:
                futures = await client.resume()
                values = await client.gather(list(futures.values()))
                await client.flush()
                return dict(zip(futures, values, strict=True))

        assert asyncio.run(main()) == {"orphan-0": 9, "orphan-1": 16}
    with Store(store_url) as store:
        assert {t.state for t in store.tasks(name="orphan")} == {"FINISHED"}


def fan_out_balsam(n: int) -> int:
    """A task that submits balsam tasks through get_client() (resources and all)."""
    client = get_client()
    assert isinstance(client, Client), type(client)
    futures = client.map(square, range(n), cores=1, name="child", pure=False)
    secede()
    total = sum(client.gather(futures))
    rejoin()
    return total


def fan_out_worker_client(n: int) -> int:
    with worker_client() as client:
        assert isinstance(client, Client), type(client)
        app = client.submit_app(["echo", "grandchild"], name="grandchild")
        return sum(client.gather(client.map(square, range(n), cores=1, pure=False))) + len(app.result().stdout_tail)


def test_tasks_submit_balsam_tasks(store_url: str, tmp_path: Path) -> None:
    with ensemble(store_url, tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        a = client.submit(fan_out_balsam, 4, key="fan-a")
        b = client.submit(fan_out_worker_client, 3, key="fan-b")
        assert a.result(timeout=60) == 0 + 1 + 4 + 9
        assert b.result(timeout=60) == 0 + 1 + 4 + len("grandchild")
        client.flush()
        with Store(cluster.store_url) as store:
            (pa,) = store.tasks(key="fan-a")
            children = store.tasks(name="child", limit=None)
            assert len(children) == 4 and {c.submitted_by for c in children} == {pa.id}
            assert {c.state for c in children} == {"FINISHED"}
            (pb,) = store.tasks(key="fan-b")
            (gc,) = store.tasks(name="grandchild")
            assert gc.submitted_by == pb.id and gc.kind == "app"


def test_asynchronous_ensemble_cluster(tmp_path: Path) -> None:
    async def main() -> list[int]:
        async with LocalEnsembleCluster(
            nodes=2, cores_per_node=2, store=f"sqlite:///{tmp_path}/balsam.db", workdir=tmp_path, asynchronous=True
        ) as cluster:
            async with Client(cluster, asynchronous=True) as client:
                await client.wait_for_workers(2)
                futures = client.map(square, range(4), cores=2)
                return list(await client.gather(futures))

    assert asyncio.run(main()) == [0, 1, 4, 9]


async def add_async(x: int, y: int) -> int:
    await asyncio.sleep(0.01)
    return x + y


def test_async_def_functions_are_awaited(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    assert client.submit(add_async, 1, 2, pure=False).result(timeout=30) == 3
    assert client.gather(client.map(add_async, [1, 2], [10, 20])) == [11, 22]
    assert client.submit(add_async, 3, 4, isolate=True, pure=False).result(timeout=60) == 7


def test_dask_placement_gives_a_plain_recorded_dask_task(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    """workers=/resources= ask for Dask's own placement: a plain Dask task, as with distributed.Client."""
    cluster, client = ens
    worker = next(iter(client.scheduler_info()["workers"]))
    fut = client.submit(square, 6, workers=[worker], key="dask-placed")
    assert fut.result(timeout=30) == 36
    assert client.who_has([fut])[fut.key] == (worker,)
    futs = client.map(square, [1, 2], workers=[worker], key=["dask-placed-0", "dask-placed-1"])
    assert client.gather(futs) == [1, 4]
    assert client.map(square, []) == []  # an empty map binds no argument
    client.flush()
    with Store(cluster.store_url) as store:
        (t,) = store.tasks(key="dask-placed")
        assert t.kind == "dask" and t.state == "FINISHED"


class CallableObject:
    def __call__(self, *args: object) -> int:
        return len(args)


def test_callable_objects_are_not_signature_checked(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    assert client.submit(CallableObject(), 1, 2, pure=False).result(timeout=30) == 2
