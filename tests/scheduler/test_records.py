"""A record worth reading: what each attempt launched, where, how it ended, on which node."""

from __future__ import annotations

import pytest

from balsam_dask import AppError, Client, LocalEnsembleCluster, Store


def _parse(text: str) -> int:
    return int(text)


def user_code(text: str) -> int:
    return _parse(text) + 1


def _row_and_events(cluster: LocalEnsembleCluster, key: str) -> tuple[object, list[object]]:
    with Store(cluster.store_url) as store:
        (t,) = store.tasks(key=key)
        return t, store.history(t.id)


def test_a_failed_app_records_its_workdir_code_command_and_own_error(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, client = ens
    fut = client.submit_app("sh -c {script}", {"script": "echo partial; echo 'disk full' >&2; exit 3"}, name="fails")
    with pytest.raises(AppError, match="exited with return code 3"):
        fut.result(timeout=60)
    client.flush()
    t, events = _row_and_events(cluster, fut.key)
    assert t.state == "FAILED" and t.return_code == 3
    assert t.workdir is not None and t.workdir.endswith(f"fails-{t.id}")
    assert "exited with return code 3" in t.error_tail and "disk full" in t.error_tail
    assert t.error_tail.startswith("AppError: command") and 'File "' not in t.error_tail  # no frames of ours
    (err,) = [e for e in events if e.to_state == "RUN_ERROR"]
    assert err.message.endswith("command: sh -c 'echo partial; echo '\"'\"'disk full'\"'\"' >&2; exit 3'")


def test_a_failed_function_records_the_users_frames_only(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, client = ens
    fut = client.submit(user_code, "seven", pure=False)
    with pytest.raises(ValueError, match="invalid literal"):
        fut.result(timeout=60)
    client.flush()
    t, _ = _row_and_events(cluster, fut.key)
    assert "in user_code" in t.error_tail and "in _parse" in t.error_tail
    assert "ValueError: invalid literal for int() with base 10: 'seven'" in t.error_tail
    assert "balsam_dask/" not in t.error_tail and "/distributed/" not in t.error_tail, t.error_tail


def test_history_names_nodes_and_the_command_that_ran(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, client = ens
    fut = client.submit_app(["echo", "hello world"], name="greet")
    assert fut.result(timeout=60).returncode == 0
    client.flush()
    t, events = _row_and_events(cluster, fut.key)
    (running,) = [e for e in events if e.to_state == "RUNNING"]
    assert running.worker in {"node-0", "node-1"}
    (done,) = [e for e in events if e.to_state == "RUN_DONE"]
    assert done.message == "command: echo 'hello world'"
    assert (done.worker, done.since) == (running.worker, running.ts)  # the run, from its end alone
    assert t.return_code == 0 and t.workdir.endswith(f"greet-{t.id}")


@pytest.mark.mpi
def test_a_failed_mpi_launch_records_the_launcher_command(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, client = ens
    fut = client.submit_mpi(["sh", "-c", "exit 5"], nodes=1, ranks_per_node=2, name="mpi-fails")
    with pytest.raises(AppError):
        fut.result(timeout=60)
    client.flush()
    t, events = _row_and_events(cluster, fut.key)
    assert t.return_code != 0 and t.workdir.endswith(f"mpi-fails-{t.id}")
    (err,) = [e for e in events if e.to_state == "RUN_ERROR"]
    assert "command: " in err.message and "mpiexec" in err.message.split("command: ")[1]
