"""Outputs never mix: every task has its own work directory and result file, whatever its name."""

from __future__ import annotations

from pathlib import Path

import pytest

from balsam_dask import Client, InvalidSpec, LocalEnsembleCluster, Store
from balsam_dask.spec import MAX_NAME_LENGTH, TaskSpec


def test_same_named_apps_write_to_their_own_directories(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    cluster, client = ens
    futures = [
        client.submit_app("sh -c {script} {i}", {"script": "echo $0; sleep 0.3; echo done $0", "i": i}, name="sim")
        for i in range(8)
    ]
    results = client.gather(futures)
    dirs = {r.workdir for r in results}
    assert len(dirs) == 8, dirs
    client.flush()
    with Store(cluster.store_url) as store:
        for i, (fut, r) in enumerate(zip(futures, results, strict=True)):
            assert Path(r.stdout_path).read_text() == f"{i}\ndone {i}\n"
            (row,) = store.tasks(key=fut.key)
            assert Path(r.workdir).name == f"sim-{row.id}"  # a person finds it by name and task id
            assert row.workdir == str(r.workdir)


def test_unnamed_tasks_are_labelled_by_function_and_id(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    from balsam_dask import current_task

    def where() -> tuple[int | None, str]:
        ctx = current_task()
        assert ctx is not None
        return ctx.task_id, ctx.key

    cluster, client = ens
    task_id, key = client.submit(where, pure=False).result()
    client.flush()
    with Store(cluster.store_url) as store:
        (row,) = store.tasks(key=key)
    assert task_id == row.id


@pytest.mark.parametrize(
    "name",
    ["..", ".", "a/b", "../escape", "x\x00y", "tab\there", "a" * (MAX_NAME_LENGTH + 1), "", "a\\b"],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidSpec, match=r"name=.* is invalid: give 1 to 200 characters"):
        TaskSpec(name=name)


def test_a_huge_name_is_refused_at_submit_with_a_short_message(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    with pytest.raises(InvalidSpec, match=r"\(1000000 chars\)") as info:
        client.submit_app(["true"], name="n" * 1_000_000)
    assert len(str(info.value)) < 400
    with pytest.raises(InvalidSpec, match=r"name='\.\.' is invalid"):
        client.submit(print, 1, name="..")


def test_large_results_are_stored_per_task(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    """Results over the inline limit go to files: keys that differ only after 120 characters
    or only in punctuation still get their own files."""
    import cloudpickle

    cluster, client = ens
    stem = "k" * 130
    keys = [f"{stem}-a", f"{stem}-b", "big:result.1", "big_result_1"]
    futures = [client.submit(bytes, 100_000 + i, key=k) for i, k in enumerate(keys)]
    assert [len(b) for b in client.gather(futures)] == [100_000 + i for i in range(4)]
    client.flush()
    with Store(cluster.store_url) as store:
        for i, k in enumerate(keys):
            (row,) = store.tasks(key=k)
            assert row.result_ref is not None
            data = store.result_bytes(row.id)
            assert data is not None and len(cloudpickle.loads(data)) == 100_000 + i
