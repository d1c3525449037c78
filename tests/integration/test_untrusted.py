"""What someone who can write the store or a result file plants is never unpickled: resuming and
restoring refuse it (the task is failed, or computed again) and run everything else."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import time
from collections import Counter
from pathlib import Path

import cloudpickle
import pytest
from dask._task_spec import Task, TaskRef
from distributed import wait

from balsam_dask import Store, TaskSpec
from balsam_dask.errors import UntrustedData
from balsam_dask.payload import dump_payload
from balsam_dask.spec import Resources
from balsam_dask.store import NewTask, TaskUpdate, Transition
from tests.clusters import ensemble
from tests.untrusted import forged, planted_pickle, raw, set_raw

SPEC = TaskSpec(resources=Resources.serial(1), name="orphan")
TO_FINISHED = ("CREATED", "READY", "RUNNING", "RUN_DONE", "FINISHED")
UNSIGNED = "is not signed (stored by a balsam_dask before it signed its store, or not by balsam_dask)"


def square(x: int) -> int:
    return x * x


def _new(store: Store, key: str, run_spec: Task, parents: tuple[int, ...] = ()) -> NewTask:
    return NewTask(store.new_id(), key, SPEC, parents=parents, payload=dump_payload(SPEC, run_spec))


def _finished(store: Store, task: NewTask, result: dict[str, object]) -> None:
    now = time.time()
    steps = [
        Transition(store.new_id(), task.id, a, b, now, 1) for a, b in zip(TO_FINISHED, TO_FINISHED[1:], strict=False)
    ]
    store.apply([task, *steps, TaskUpdate(task.id, result)])


def _failure(store: Store, task_id: int) -> str:
    t = store.task(task_id)
    assert t.state == "FAILED", (task_id, t.state)
    return store.history(task_id)[-1].message or ""


def test_resume_refuses_planted_payloads(store_url: str, tmp_path: Path) -> None:
    marks = {k: tmp_path / f"ran-{k}" for k in ("unsigned", "forged")}
    with Store(store_url) as old:  # a session that ended with three tasks never run
        tasks = {k: _new(old, f"orphan-{k}", Task(f"orphan-{k}", square, i + 3))
                 for i, k in enumerate(("good", "unsigned", "forged"))}  # fmt: skip
        old.apply(list(tasks.values()))
        signed = raw(old, tasks["forged"].id, "payload")
        assert signed is not None
        set_raw(old, tasks["unsigned"].id, payload=planted_pickle(marks["unsigned"]))
        set_raw(old, tasks["forged"].id, payload=forged(planted_pickle(marks["forged"]), signed))

    with ensemble(store_url, tmp_path, nodes=1, cores_per_node=2) as (_, client):
        futures = client.resume()
        assert set(futures) == {"orphan-good"}
        assert futures["orphan-good"].result(timeout=60) == 9
        client.flush()
    assert [m for m in marks.values() if m.exists()] == []  # nothing planted was unpickled
    with Store(store_url) as store:
        assert store.task(tasks["good"].id).state == "FINISHED"
        tid = tasks["unsigned"].id
        assert _failure(store, tid) == (f"cannot resume: task {tid}: its payload {UNSIGNED}; refusing to unpickle it")
        tid = tasks["forged"].id
        assert _failure(store, tid).startswith(f"cannot resume: task {tid}: the signature of its payload does not")


def test_resume_refuses_planted_parent_results(store_url: str, tmp_path: Path) -> None:
    """Finished parents whose stored results were replaced: an inline one in the database and
    one in a result file. Their unfinished children fail; the child of an intact parent runs."""
    marks = {k: tmp_path / f"ran-{k}" for k in ("inline", "file")}
    result_file = tmp_path / "parent-file.pkl"
    data = cloudpickle.dumps(5)
    result_file.write_bytes(data)
    with Store(store_url) as old:
        parents = {k: _new(old, f"parent-{k}", Task(f"parent-{k}", square, 2)) for k in ("good", "inline", "file")}
        _finished(old, parents["good"], {"result": cloudpickle.dumps(4)})
        _finished(old, parents["inline"], {"result": cloudpickle.dumps(4)})
        digest = hashlib.sha256(data).digest()
        _finished(old, parents["file"], {"result_ref": str(result_file), "result_digest": digest})
        children = {k: _new(old, f"child-{k}", Task(f"child-{k}", square, TaskRef(p.key)), (p.id,))
                    for k, p in parents.items()}  # fmt: skip
        old.apply(list(children.values()))
        assert old.result_bytes(parents["file"].id) == data
        set_raw(old, parents["inline"].id, result=planted_pickle(marks["inline"]))
    result_file.write_bytes(planted_pickle(marks["file"]))

    with ensemble(store_url, tmp_path, nodes=1, cores_per_node=2) as (_, client):
        futures = client.resume()
        assert set(futures) == {"child-good"}
        assert futures["child-good"].result(timeout=60) == 16
        client.flush()
    assert [m for m in marks.values() if m.exists()] == []
    with Store(store_url) as store:
        pid = parents["inline"].id
        assert _failure(store, children["inline"].id) == (
            f"cannot resume: the result of parent {pid} (parent-inline) cannot be used: task {pid}: its result "
            f"{UNSIGNED}; refusing to unpickle it"
        )
        pid = parents["file"].id
        assert _failure(store, children["file"].id) == (
            f"cannot resume: the result of parent {pid} (parent-file) cannot be used: task {pid}: its result file "
            f"{result_file} is not the file its worker wrote (its SHA-256 differs from the one recorded then); "
            "refusing to unpickle it"
        )
        assert store.task(children["good"].id).state == "FINISHED"


def big(i: int, log: str) -> bytes:
    """A result over the inline limit (it goes to a result file), and a line in ``log`` per run."""
    with open(log, "a") as fh:
        fh.write(f"{i}\n")
    return bytes([i]) * 100_000


def test_a_replaced_result_file_is_computed_again_not_restored(tmp_path: Path) -> None:
    """A lost result comes back from the store only if its file is the one its worker wrote."""
    log, mark = tmp_path / "runs.log", tmp_path / "ran-restored"
    with ensemble(f"sqlite:///{tmp_path}/balsam.db", tmp_path, nodes=2, cores_per_node=2) as (cluster, client):
        futures = client.map(big, range(6), log=str(log), pure=False)
        wait(futures)
        client.flush()
        who = client.who_has(futures)
        victim = Counter(w for ws in who.values() for w in ws).most_common(1)[0][0]
        lost = [f for f in futures if victim in who[f.key]]
        with Store(cluster.store_url) as store:
            refs = {f.key: store.tasks(key=f.key)[0] for f in lost}
        for t in refs.values():
            assert t.result_ref is not None
            Path(t.result_ref).write_bytes(planted_pickle(mark))
        os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
        assert client.gather(futures) == [bytes([i]) * 100_000 for i in range(6)]
        client.flush()
        assert not mark.exists()
        runs = Counter(log.read_text().split())
        with Store(cluster.store_url) as store:
            for f in lost:
                t = refs[f.key]
                assert runs[str(futures.index(f))] == 2, f.key  # computed again
                messages = [e.message or "" for e in store.history(t.id)]
                assert any(f"reading it failed: UntrustedData: task {t.id}: its result file" in m for m in messages)
                assert cloudpickle.loads(store.result_bytes(t.id) or b"") == bytes([futures.index(f)]) * 100_000


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """Under umask 022: work directories, the results directory and files, the store and its key."""
    mine = tmp_path / "chosen"
    mine.mkdir()
    os.chmod(mine, 0o755)
    mark = tmp_path / "ran"
    old_umask = os.umask(0o022)
    try:
        with ensemble(f"sqlite:///{tmp_path}/balsam.db", tmp_path, nodes=1, cores_per_node=2) as (cluster, client):
            futures = [
                client.submit(bytes, 100_000, key="big-result"),
                client.submit(os.getpid, isolate=True, name="isolated"),
                client.submit_app(["true"], name="app"),
                client.submit_app(["true"], name="chosen", workdir=str(mine)),
                client.submit_app(["true"], name="new", workdir=str(tmp_path / "new" / "dir")),
            ]
            client.gather(futures)
            client.flush()
            with Store(cluster.store_url) as store:
                (t,) = store.tasks(key="big-result")
                assert t.result_ref is not None
                ref = Path(t.result_ref)
                assert store.result_bytes(t.id) == cloudpickle.dumps(bytes(100_000))
                ref.write_bytes(planted_pickle(mark))
                with pytest.raises(UntrustedData, match=f"task {t.id}: its result file {ref} is not the file"):
                    store.result_bytes(t.id)
                key = Path(store.key_file)
        assert not mark.exists()
        root = tmp_path / "balsam_workdirs"
        modes = {p.name: mode(p) for p in [ref, ref.parent, root, *root.iterdir(), key, *tmp_path.glob("balsam.db*")]}
        assert {n for n in modes if n.startswith(("isolated-", "app-"))} != set()
        want = {n: 0o600 if n.endswith((".pkl", ".key", ".db", "-wal", "-shm")) else 0o700 for n in modes}
        assert modes == want
        assert mode(mine) == 0o755  # a work directory the user chose is left as it was
        assert mode(tmp_path / "new") == mode(tmp_path / "new" / "dir") == 0o700
    finally:
        os.umask(old_umask)


def test_the_key_file_given_to_the_cluster_signs_its_tasks(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "mine.key"
    url = f"sqlite:///{tmp_path}/balsam.db"
    with ensemble(url, tmp_path, nodes=1, cores_per_node=2, plugin_options={"key_file": str(key)}) as (_, client):
        assert client.submit(square, 7, key="keyed").result(timeout=60) == 49
        client.flush()
    assert mode(key) == 0o600 and not Path(f"{tmp_path}/balsam.db.key").exists()
    with Store(url, key_file=key) as store:
        (t,) = store.tasks(key="keyed")
        assert store.payload(t.id) is not None and cloudpickle.loads(store.result_bytes(t.id) or b"") == 49
