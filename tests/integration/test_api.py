"""balsam_dask.Client keeps Dask's API working and records every task."""

from __future__ import annotations

import copy
import time
import traceback
from pathlib import Path
from typing import Any

import dask
import distributed
import pytest
from distributed import as_completed, wait

import balsam_dask
from balsam_dask import AppResult, Client, LocalEnsembleCluster, Store, current_task, daskconfig
from balsam_dask.errors import AppError
from balsam_dask.function import loads
from tests.clusters import history_by_key, store_of
from tests.store.test_api import _count_task_updates, _task_updates

LIFECYCLE = [("CREATED", "READY"), ("READY", "RUNNING"), ("RUNNING", "RUN_DONE"), ("RUN_DONE", "FINISHED")]


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def whoami() -> tuple[str, int, tuple[str, ...]]:
    ctx = current_task()
    assert ctx is not None
    return ctx.node, ctx.cores, ctx.gpu_ids


def test_submit_map_gather_wait_as_completed(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, client = ens
    a = client.submit(inc, 1, cores=2, name="first", tags={"t": "api"})
    b = client.submit(add, a, 10)  # a future as an argument
    assert b.result() == 12
    futures = client.map(inc, range(20), tags={"t": "api-map"})
    assert client.gather(futures) == list(range(1, 21))
    wait(futures)
    assert sorted(f.result() for f in as_completed(futures)) == list(range(1, 21))
    node, cores, gpus = client.submit(whoami, cores=3).result()
    assert node.startswith("node-") and cores == 3 and gpus == ()
    client.flush()
    store = store_of(cluster)
    try:
        assert history_by_key(store, a.key) == LIFECYCLE
        (t,) = store.tasks(key=a.key)
        assert (t.name, t.cores, t.tags, t.kind, t.has_payload, t.has_result) == (
            "first",
            2,
            {"t": "api"},
            "python",
            True,
            True,
        )
        (tb,) = store.tasks(key=b.key)
        assert tb.parents == [t.id]
        assert store.count(tags={"t": "api-map"}, state="FINISHED") == 20
        import cloudpickle

        assert cloudpickle.loads(store.result_bytes(t.id)) == 2
    finally:
        store.close()


def _run_spec_function_type(dask_scheduler: Any, key: str) -> str:
    return type(dask_scheduler.tasks[key].run_spec.args[0]).__name__


def test_closures_travel_pickled_once_per_call_and_load_once_per_worker(
    ens: tuple[LocalEnsembleCluster, Client],
) -> None:
    _cluster, client = ens
    box = {"offset": 100}

    def shifted(x: int) -> int:  # a closure: Dask would cloudpickle it again for every task
        return x + box["offset"]

    before = client.run(loads)
    first = client.map(shifted, range(40), pure=False)
    box["offset"] = 1000  # captured when each call was made, as with Dask
    later = client.submit(shifted, 1, pure=False)
    assert client.gather(first) == [x + 100 for x in range(40)]
    assert later.result() == 1001
    assert client.run_on_scheduler(_run_spec_function_type, key=first[0].key) == "PickledFunction"
    assert client.run_on_scheduler(_run_spec_function_type, key=later.key) == "PickledFunction"
    assert client.submit(inc, 1, pure=False).result() == 2  # importable: sent as itself
    after = client.run(loads)
    loaded = {w: after[w] - before[w] for w in after}
    # two distinct pickles (the map's and the submit's), each unpickled at most once per worker
    assert 2 <= sum(loaded.values()) <= 2 * len(loaded) and max(loaded.values()) <= 2, loaded


def test_a_function_the_workers_cannot_load_fails_its_task_by_name(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    import sys
    import types

    from balsam_dask import FunctionLoadError

    cluster, client = ens
    module = types.ModuleType("balsam_client_only")  # exists in this process only, not on the workers
    exec("class Model:\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        model = module.Model()

        def predict(x: int) -> int:
            return x if model else 0

        future = client.submit(predict, 1, pure=False)
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(FunctionLoadError, match=r"function predict .*'balsam_client_only'"):
        future.result()
    client.flush()
    store = store_of(cluster)
    try:
        (t,) = store.tasks(key=future.key)
        assert t.state == "FAILED" and "cannot load the task's function predict" in (t.error_tail or "")
    finally:
        store.close()


def _restriction_objects(dask_scheduler: Any, keys: list[str]) -> dict[str, Any]:
    import gc

    from balsam_dask.protocol import DISPATCH_ANNOTATION

    gc.collect()
    tasks = [dask_scheduler.tasks[k] for k in keys]
    return {
        "restrictions": len({id(ts.worker_restrictions) for ts in tasks}),
        "workers": len({next(iter(ts.worker_restrictions)) for ts in tasks}),
        "host_restrictions": {ts.host_restrictions for ts in tasks},
        "dispatch_tracked": sum(gc.is_tracked(ts.annotations[DISPATCH_ANNOTATION]) for ts in tasks),
    }


def test_finished_tasks_leave_few_objects_for_the_garbage_collector(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    """The scheduler keeps a finished task while its future lives, and every full garbage
    collection walks what it holds: restrictions are shared per worker, the dispatch record
    holds only strings, numbers and tuples (untracked after one collection)."""
    _cluster, client = ens
    futures = client.map(inc, range(40), pure=False, gpus=0)
    wait(futures)
    seen = client.run_on_scheduler(_restriction_objects, keys=[f.key for f in futures])
    assert seen["restrictions"] == seen["workers"] <= 2
    assert seen["host_restrictions"] == {None}
    assert seen["dispatch_tracked"] == 0


def test_executor_collections_and_joblib(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, client = ens
    with client.get_executor() as ex:
        assert list(ex.map(inc, [1, 2, 3])) == [2, 3, 4]
    total = dask.delayed(sum)([dask.delayed(inc)(i) for i in range(10)])
    assert client.compute(total).result() == 55
    import joblib

    with joblib.parallel_backend("dask"):
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(inc)(i) for i in range(5)) == [1, 2, 3, 4, 5]
    client.flush()
    store = store_of(cluster)
    try:
        # collections' tasks keep Dask's scheduling and are recorded as plain Dask tasks
        assert store.count(kind="dask", state="FINISHED") >= 11
    finally:
        store.close()


def test_one_graph_records_every_parent_and_ids_follow_dask_priority(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    """A graph sent in one update_graph (a collection's compute) reaches the plugin
    dependents first (Dask walks it from the requested keys): each task's parents must be
    recorded all the same, and ids follow Dask's priority (its order of execution), so
    the store writes the rows of tasks that run together next to each other."""
    cluster, client = ens
    leaves = [dask.delayed(inc, pure=True)(i, dask_key_name=f"leaf-{i}") for i in range(30)]
    pairs = [dask.delayed(add)(leaves[i], leaves[i + 1], dask_key_name=f"pair-{i}") for i in range(0, 30, 2)]
    total = dask.delayed(sum)(pairs, dask_key_name="graph-total")
    assert client.compute(total).result() == sum(range(1, 31))
    mapped = client.map(inc, range(200), key=[f"ordered-{i}" for i in range(200)])
    wait(mapped)
    client.flush()
    store = store_of(cluster)
    try:
        ours = [t for t in store.tasks(limit=None) if t.key.startswith(("leaf-", "pair-", "graph-", "ordered-"))]
        ids = {t.key: t.id for t in ours}
        parents = {t.key: t.parents for t in ours}
        for i in range(0, 30, 2):
            assert sorted(parents[f"pair-{i}"]) == sorted([ids[f"leaf-{i}"], ids[f"leaf-{i + 1}"]])
            assert ids[f"pair-{i}"] > max(ids[f"leaf-{i}"], ids[f"leaf-{i + 1}"])  # parents first
        assert sorted(parents["graph-total"]) == sorted(ids[f"pair-{i}"] for i in range(0, 30, 2))
        order = [ids[f"ordered-{i}"] for i in range(200)]
        assert order == sorted(order)  # a map's priority is its order
    finally:
        store.close()


def where(i: int) -> str:
    return distributed.get_worker().address


def test_dask_annotations_place_balsam_tasks_as_dask_does(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    """dask.annotate(workers=...)/(resources=...) around balsam submits: Dask places those
    tasks (the placer holds none of them), and the store records them with their spec."""
    cluster, client = ens
    target = sorted(client.scheduler_info()["workers"])[1]
    with dask.annotate(workers=[target]):
        futures = client.map(where, range(8), tags={"placed": "annotated"})
    assert set(client.gather(futures)) == {target}  # before: the placer spread them over both nodes
    with dask.annotate(resources={"nowhere": 1}):  # a resource no worker has: it waits, as in Dask
        waits = client.submit(where, 0, key="annotated-nowhere", tags={"placed": "nowhere"})
    with pytest.raises(distributed.TimeoutError):
        waits.result(timeout=0.5)
    state = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.tasks["annotated-nowhere"].state)
    assert state == "no-worker"
    waits.cancel()
    client.flush()
    store = store_of(cluster)
    try:
        done = store.tasks(tags={"placed": "annotated"})
        assert len(done) == 8 and all(t.state == "FINISHED" and t.kind == "python" for t in done)
        (nowhere,) = store.tasks(key="annotated-nowhere")
        assert nowhere.tags == {"placed": "nowhere"} and nowhere.state != "RUNNING"
    finally:
        store.close()


def hold_until(path: str) -> None:
    while not Path(path).exists():
        time.sleep(0.02)


def where_with(data: bytes) -> str:
    return distributed.get_worker().address


def test_a_task_runs_where_its_inputs_are_if_it_fits_there(ens: tuple[LocalEnsembleCluster, Client],
                                                          tmp_path: Path) -> None:  # fmt: skip
    """As Dask places a task where its inputs are (no transfer), so does the placer, on a node
    where it fits; best fit would choose the busier node here."""
    _, client = ens
    release = tmp_path / "release"
    busy = client.submit(hold_until, str(release), pure=False)
    try:
        deadline = time.time() + 30
        while not (busy_on := [w for w, keys in client.processing().items() if busy.key in keys]):
            assert time.time() < deadline
            time.sleep(0.02)
        other = next(w for w in client.scheduler_info()["workers"] if w != busy_on[0])
        data = client.submit(bytes, 1_000_000, workers=[other])  # Dask's placement: on the other node
        assert client.submit(where_with, data, pure=False).result(timeout=30) == other
    finally:
        release.touch()
    busy.result(timeout=30)


def submit_and_wait(path: str) -> None:
    client = distributed.get_client()
    client.submit(hold_until, path, key="sub-submitted").result()


def _ours_on_worker(dask_worker: Any) -> list[Any]:
    return [ts.priority for k, ts in dask_worker.state.tasks.items() if k in ("sub-submitter", "sub-submitted")]


def _priorities(dask_scheduler: Any) -> dict[str, Any]:
    return {k: ts.priority for k, ts in dask_scheduler.tasks.items() if ts.state == "processing"}


def test_dispatched_tasks_keep_dasks_priorities_on_the_scheduler(ens: tuple[LocalEnsembleCluster, Client],
                                                                tmp_path: Path) -> None:  # fmt: skip
    """A worker starts its queued balsam tasks in dispatch order (their priority in the message),
    but the scheduler keeps Dask's priorities: a task a task submits comes first."""
    _, client = ens
    release = tmp_path / "release"
    parent = client.submit(submit_and_wait, str(release), key="sub-submitter")
    try:
        deadline = time.time() + 30
        while len(priorities := client.run_on_scheduler(_priorities)) < 2:
            assert time.time() < deadline
            time.sleep(0.02)
        assert priorities["sub-submitter"] > priorities["sub-submitted"], priorities  # lower runs first
        on_workers = client.run(_ours_on_worker)
        got = [p for ps in on_workers.values() for p in ps]
        assert len(got) == 2 and all(p[:2] == (0, 0) for p in got), on_workers  # the dispatch order
    finally:
        release.touch()
    parent.result(timeout=30)


def divide(a: int, b: int) -> float:
    return a / b


def _files(tb: Any) -> list[str]:
    return [frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb)]


def test_a_task_error_shows_the_users_frames_not_balsam_dasks(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    """Dask's workers send back a task's error without their own frames, and clients shorten
    the traceback only when they wait synchronously: balsam_dask's frames are left out on the
    worker (every way of waiting), and its configuration survives a reset of Dask's (as test
    harnesses do), for the client's own shortening and code capture."""
    cluster, client = ens
    own = str(Path(balsam_dask.__file__).parent)
    future = client.submit(divide, 1, 0, pure=False)
    with pytest.raises(ZeroDivisionError):
        future.result(timeout=30)
    files = _files(future.traceback())  # as an asynchronous client's await sees it: unshortened
    assert files and not any(f.startswith(own) for f in files) and files[-1] == __file__, files
    saved = copy.deepcopy(dask.config.config)
    try:
        for name, entry in (("admin.traceback.shorten", daskconfig.FRAMES),
                            ("distributed.diagnostics.computations.ignore-modules", daskconfig.MODULE)):  # fmt: skip
            dask.config.set({name: [v for v in dask.config.get(name) if v != entry]})  # a copy from before
        with Client(cluster) as again:
            assert daskconfig.FRAMES in dask.config.get("admin.traceback.shorten")
            assert daskconfig.MODULE in dask.config.get("distributed.diagnostics.computations.ignore-modules")
            with pytest.raises(ZeroDivisionError) as e:
                again.submit(divide, 2, 0, pure=False).result(timeout=30)
            assert not any(f.startswith(own) for f in _files(e.value.__traceback__))
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)


def test_plain_distributed_client_is_recorded(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, client = ens
    with distributed.Client(cluster.scheduler_address) as plain:
        f = plain.submit(inc, 41, key="plain-inc-41")
        assert f.result() == 42
    client.flush()
    store = store_of(cluster)
    try:
        (t,) = store.tasks(key="plain-inc-41")
        assert t.kind == "dask" and t.state == "FINISHED"
        assert history_by_key(store, "plain-inc-41") == LIFECYCLE
    finally:
        store.close()


async def _remove_plugin(dask_scheduler: Any) -> None:
    await dask_scheduler.plugins.pop("balsam-dask").close()


def test_plugin_added_to_a_running_cluster_records_and_removed_leaves_it_bare(tmp_path: Path) -> None:
    """BalsamPlugin registered on a running plain Dask cluster records the tasks that follow;
    removed and closed, it leaves the scheduler's handlers as it found them and records no more."""
    from balsam_dask import BalsamPlugin

    url = f"sqlite:///{tmp_path}/late.db"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:  # fmt: skip
        s = cluster.scheduler
        wrapped = ("steal-response", "long-running")  # the plugin's handlers run Dask's first
        dasks = {op: s.stream_handlers[op] for op in wrapped}
        before = set(s.handlers)
        with distributed.Client(cluster) as client:
            assert client.submit(inc, 1, key="before").result() == 2
            client.register_plugin(BalsamPlugin(url))
            assert {"balsam_info", "balsam_flush"} <= set(s.handlers)
            assert all(s.stream_handlers[op] is not dasks[op] for op in wrapped)
            assert client.submit(inc, 2, key="during").result() == 3
            client.run_on_scheduler(_remove_plugin)
            assert set(s.handlers) == before and all(s.stream_handlers[op] is dasks[op] for op in wrapped)
            assert "balsam-dask" not in s.plugins
            assert client.submit(inc, 3, key="after").result() == 4
    with Store(url) as store:  # closing wrote what was queued
        assert [t.key for t in store.tasks()] == ["during"]
        assert history_by_key(store, "during") == LIFECYCLE


def test_a_new_map_goes_in_with_its_first_states(store_url: str) -> None:
    """Dask moves a new graph's tasks to their first states right after the plugin's
    update_graph; the writer ships nothing until then, so each task's row goes in in that state
    (READY) and is updated once more when the task runs, not twice: a map larger than the
    writer's batch used to ship its rows as soon as a batch was queued, before their READY."""
    from balsam_dask import BalsamPlugin

    with Store(store_url) as store:
        _count_task_updates(store)
    n = 600
    plugin = BalsamPlugin(store_url, writer_options={"max_batch": 200})
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                                  scheduler_kwargs={"plugins": [plugin]}) as cluster:  # fmt: skip
        with distributed.Client(cluster) as client:
            assert sum(client.gather(client.map(inc, range(n)))) == sum(range(1, n + 1))
    with Store(store_url) as store:
        assert store.summary() == {"FINISHED": n}
        updates = _task_updates(store)
    # at most one update per task when it ran (none for those that ran before the first
    # shipment), a few more for tasks whose run spanned two shipments
    assert updates <= 1.1 * n, updates


def test_submit_app(ens: tuple[LocalEnsembleCluster, Client], tmp_path: Path) -> None:
    cluster, client = ens
    f = client.submit_app("echo {greeting} {who}", {"greeting": "hello", "who": "a; rm -rf /"}, name="echo")
    r = f.result()
    assert isinstance(r, AppResult) and r.returncode == 0 and r.ok
    assert r.stdout_tail.strip() == "hello a; rm -rf /"  # one argument, never run by a shell
    assert r.stdout_path.read_text().strip() == "hello a; rm -rf /" and r.stdout_path.parent == r.workdir
    env = client.submit_app(["sh", "-c", "echo $OMP_NUM_THREADS $MYVAR"], cores=2, env={"MYVAR": "x"}).result()
    assert env.stdout_tail.split() == ["2", "x"]
    bad = client.submit_app("sh -c 'echo oops >&2; exit 3'", workdir=str(tmp_path / "bad"), retries=0)
    with pytest.raises(AppError, match="return code 3") as ei:
        bad.result()
    assert "oops" in ei.value.stderr_tail
    ok = client.submit_app("sh -c 'exit 3'", check=False)
    assert ok.result().returncode == 3
    client.flush()
    store = store_of(cluster)
    try:
        (t,) = store.tasks(key=bad.key)
        assert t.state == "FAILED" and t.kind == "app" and "oops" in (t.error_tail or "")
        (t2,) = store.tasks(key=ok.key)
        assert t2.return_code == 3 and t2.state == "FINISHED" and t2.workdir
        (e,) = store.tasks(key=f.key)
        assert e.spec["command"] == "echo {greeting} {who}" and e.spec["params"]["who"] == "a; rm -rf /"
    finally:
        store.close()
