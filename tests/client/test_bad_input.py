"""Bad input at submit: one clear error naming the value and the limit, nothing half-way."""

from __future__ import annotations

import threading

import pytest

from balsam_dask import Client, LocalEnsembleCluster, Store
from balsam_dask.errors import InvalidSpec, InvalidTags


def f(x: int, scale: int = 1) -> int:
    return x * scale


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cores": 0}, r"cores=0 is invalid: give an integer >= 1, e.g. cores=2"),
        ({"cores": -3}, r"cores=-3 is invalid"),
        ({"cores": 5}, r"cores=5, gpus=0 cannot run on any node: the largest node has 4 cores and 0 GPUs"),
        ({"gpus": 1}, r"gpus=1 cannot run on any node: the largest node has 4 cores and 0 GPUs"),
        ({"gpus": -1}, r"gpus=-1 is invalid"),
        ({"walltime": "soon"}, r"walltime='soon' is invalid"),
        ({"timeout": -1}, r"timeout=-1 is invalid"),
        ({"retries": -1}, r"retries=-1 is invalid"),
        ({"tags": {"bad key": 1}}, r"tag name 'bad key' is invalid"),
        ({"tags": ["x"]}, r"tags=\['x'\] is invalid"),
        ({"priority": "high"}, r"priority='high' is invalid"),
        ({"isolate": "yes"}, r"isolate='yes' is invalid"),
        ({"durable": "no"}, r"durable='no' is invalid: give True or False, e.g. durable=True"),
        ({"on_error": 3}, r"on_error=3 is not callable"),
        ({"scael": 2}, r"got an unexpected keyword argument 'scael'; balsam keywords are cores, gpus"),
        ({"core": 2}, r"unexpected keyword argument 'core'"),
        ({"workers": ["a"], "cores": 2}, r"workers= is Dask's placement and cores= is balsam_dask's"),
        ({"resources": {"GPU": 1}, "tags": {"a": 1}}, r"resources= is Dask's placement and tags= is balsam_dask's"),
    ],
)
def test_submit_rejects(ens: tuple[LocalEnsembleCluster, Client], kwargs: dict[str, object], message: str) -> None:
    cluster, client = ens
    store = Store(cluster.store_url)
    try:
        before = store.count()
        with pytest.raises(InvalidSpec, match=message):
            client.submit(f, 1, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(InvalidSpec, match=message):
            client.map(f, [1, 2], **kwargs)  # type: ignore[arg-type]
        client.flush()
        assert store.count() == before  # nothing reached the scheduler
    finally:
        store.close()


def test_unpicklable_and_bad_callables(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    with pytest.raises(InvalidSpec, match="function uses_lock cannot be pickled"):
        client.submit(uses_lock)
    with pytest.raises(InvalidSpec, match="is not callable"):
        client.submit(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match=r"f\(x: .*: missing a required argument: 'x'"):
        client.submit(f)
    with pytest.raises(InvalidTags):
        client.submit(f, 1, tags={"k": [1]})


def test_an_unpicklable_argument_is_named(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, client = ens
    lock = threading.Lock()
    with Store(cluster.store_url) as store:
        before = store.count()
        with pytest.raises(
            InvalidSpec, match=r"argument 0 of f \(lock\) cannot be serialized \(pickled\) to travel to the workers"
        ):
            client.submit(f, lock)
        with pytest.raises(InvalidSpec, match=r"keyword argument scale= of f \(lock\) cannot be serialized"):
            client.submit(f, 1, scale=lock)
        with pytest.raises(InvalidSpec, match=r"element 1 of iterable 0 of f \(lock\) cannot be serialized"):
            client.map(f, [1, lock])
        with pytest.raises(InvalidSpec, match=r"argument 0 of .*lambda.* \(lock\) cannot be serialized"):
            client.submit_mpi(lambda comm, x: 1, lock, nodes=1)
        client.flush()
        assert store.count() == before  # nothing reached the scheduler


def test_an_unknown_launcher_is_an_invalid_spec(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    with pytest.raises(InvalidSpec, match="bogus"):
        client.submit_mpi(["true"], launcher="bogus")
    with pytest.raises(InvalidSpec, match="bogus"):
        LocalEnsembleCluster(nodes=1, cores_per_node=1, launcher="bogus")


def test_bad_apps(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    with pytest.raises(InvalidSpec, match=r"needs parameter 'n'"):
        client.submit_app("./sim --n {n}", {})
    with pytest.raises(InvalidSpec, match=r"command=.* is invalid"):
        client.submit_app([])
    with pytest.raises(InvalidSpec, match="env entry 'A'=1 is invalid"):
        client.submit_app("true", env={"A": 1})  # type: ignore[dict-item]
    with pytest.raises(InvalidSpec, match="check='no' is invalid"):
        client.submit_app("true", check="no")  # type: ignore[arg-type]
    missing = client.submit_app("/no/such/program --flag")
    with pytest.raises(InvalidSpec, match="/no/such/program"):
        missing.result(timeout=60)  # a FAILED task with the reason, never a hang


def test_kill_needs_a_target(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    with pytest.raises(InvalidSpec, match=r"kill\(\) needs futures or tags"):
        client.kill()


def test_cluster_arguments() -> None:
    with pytest.raises(InvalidSpec, match="nodes=-1 is invalid"):
        LocalEnsembleCluster(nodes=-1)
    with pytest.raises(InvalidSpec, match="cores_per_node=0 is invalid"):
        LocalEnsembleCluster(nodes=1, cores_per_node=0)
    with pytest.raises(InvalidSpec, match="walltime='x' is invalid"):
        LocalEnsembleCluster(nodes=1, cores_per_node=1, walltime="x")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_dealy": 0.5}, r"unknown writer option 'max_dealy'; options are: max_batch, max_delay, .*"),
        ({"max_batch": 0}, r"writer option max_batch=0 is invalid: give an integer > 0, e.g. max_batch=5000"),
        ({"max_batch": 2.5}, r"writer option max_batch=2.5 is invalid: give an integer > 0"),
        ({"max_delay": "1s"}, r"max_delay='1s' is invalid: give a number of seconds > 0, e.g. max_delay=0.5"),
        ([("max_delay", 1)], r"writer_options=\[\('max_delay', 1\)\] is invalid: give a dict such as \{'max_delay'"),
        ({"nice": 20}, r"writer option nice=20 is invalid: give an integer 0\.\.19, e.g\. nice=10"),
        ({"nice": -5}, r"writer option nice=-5 is invalid: give an integer 0\.\.19"),
        ({"nice": 2.0}, r"writer option nice=2\.0 is invalid"),
        ({"nice": True}, r"writer option nice=True is invalid"),
    ],
)
def test_the_plugin_refuses_bad_writer_options_before_it_starts(options: object, match: str) -> None:
    from balsam_dask import BalsamPlugin

    with pytest.raises(InvalidSpec, match=match):
        BalsamPlugin("sqlite:///never-opened.db", writer_options=options)  # type: ignore[arg-type]


def test_a_plugin_whose_writer_cannot_start_closes_its_store(tmp_path: object, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """The scheduler fails to start with the writer's error; the plugin's close (which Dask
    calls next) closes the store it opened and does not fail over the writer it never had."""
    import asyncio

    from distributed import Scheduler

    from balsam_dask import BalsamPlugin
    from balsam_dask.store import procwriter

    def cannot_fork(self: object, *args: object, **kwargs: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable (fork)")  # what fork() says at the process limit

    monkeypatch.setattr(procwriter.ProcessWriter, "__init__", cannot_fork)
    plugin = BalsamPlugin(f"sqlite:///{tmp_path}/s.db")

    async def start() -> None:
        async with Scheduler(plugins=[plugin], dashboard_address=":0", port=0):
            pass

    with pytest.raises(RuntimeError, match="Scheduler failed to start"):
        asyncio.run(start())
    assert plugin.store is not None and plugin.writer is None
    assert "has no attribute 'writer'" not in caplog.text and "Plugin call failed" not in caplog.text
    with Store(f"sqlite:///{tmp_path}/s.db") as store:  # the plugin's session was ended by its close
        ended = {s.id: s.ended_at for s in store.sessions()}
    assert ended[plugin.store.session_id] is not None
