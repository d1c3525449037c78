"""The task database on real SQLite and PostgreSQL stores: apps, database tasks, their DAG, and
changes after submission (modify, retry, kill, remove)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import update

from balsam_dask.errors import InvalidSpec, InvalidTaskRow, UnknownApp, UnknownTask
from balsam_dask.spec import TaskSpec
from balsam_dask.store import Store, Transition
from balsam_dask.store.models import tasks_t
from balsam_dask.store.ops import Settle


def _move(store: Store, tid: int, *states: str) -> None:
    cur = store.task(tid).state
    ops = []
    for s in states:
        ops.append(Transition(store.new_id(), tid, cur, s, time.time()))
        cur = s
    if cur in ("FINISHED", "FAILED", "KILLED"):
        ops.append(Settle(tid))  # as a service's recorder ends a database task
    store.apply(ops)


def _counts(store: Store) -> tuple[int, int, dict[str, int]]:
    """Tasks, events, and the shape counters' view: what a failed write must leave as it was."""
    return store.count(), len(store.events()), store.summary()


def test_apps_are_versioned(store: Store) -> None:
    a = store.add_app("sim", "./sim --n {n}", defaults={"cores": 2, "walltime": "10m"},
                      hooks={"post": "mypkg.hooks:collect"}, description="the simulation")  # fmt: skip
    assert (a.name, a.version, a.command, a.defaults) == ("sim", 1, "./sim --n {n}", {"cores": 2, "walltime": 600.0})
    # the same definition again: the stored one, no new version
    assert store.add_app("sim", "./sim --n {n}", defaults={"cores": 2, "walltime": 600},
                         hooks={"post": "mypkg.hooks:collect"}, description="the simulation").id == a.id  # fmt: skip
    b = store.add_app("sim", ["./sim", "--n", "{n}", "--fast"])
    assert b.version == 2 and b.command == ["./sim", "--n", "{n}", "--fast"]
    assert store.app("sim").version == 2 and store.app("sim", 1).hooks == {"post": "mypkg.hooks:collect"}
    assert [(r.name, r.version) for r in store.apps()] == [("sim", 1), ("sim", 2)]
    with pytest.raises(InvalidSpec, match=r"app sim version 1 exists with another definition: give a new version, "
                       r"e\.g\. version=3"):  # fmt: skip
        store.add_app("sim", "./other {n}", version=1)
    assert store.add_app("sim", "./sim --n {n}", version=7).version == 7
    with pytest.raises(UnknownApp, match=r"app sim has no version 3 .*\(versions: 1, 2, 7\)"):
        store.app("sim", 3)
    with pytest.raises(UnknownApp, match=r"no app named 'nope' .*balsam-dask app add nope --command"):
        store.app("nope")
    assert store.remove_app("sim", 7) == 1 and store.app("sim").version == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "bad name"}, r"app='bad name' is invalid: give a name of letters, digits.*e\.g\. app='sim'"),
        ({"name": "a:b"}, r"app='a:b' is invalid"),
        ({"command": "./sim '{n}"}, r"cannot be split into arguments .*close every quote"),
        ({"command": "./sim {}"}, r"positional field \{\}; name every parameter"),
        ({"version": 0}, r"version=0 is invalid: give an integer >= 1, e\.g\. version=2"),
        ({"defaults": {"cores": 0}}, r"cores=0 is invalid: give an integer >= 1, e\.g\. cores=4"),
        ({"defaults": {"memory": 4}}, r"default 'memory' is unknown: an app's defaults are nodes, .*launcher"),
        ({"defaults": {"cores": 2, "threads_per_rank": 2}}, r"cores=2 and threads_per_rank=2 are both given"),
        ({"defaults": {"launcher": "pbsrun"}}, r"pbsrun"),
        ({"defaults": {"walltime": "soon"}}, r"walltime='soon' is invalid: give a positive duration"),
        ({"hooks": {"pre": "not a path"}}, r"hooks\.pre='not a path' is invalid: give an import path"),
        ({"hooks": {"finally": "m:f"}}, r"hook 'finally' is unknown: hooks are pre, post, error, timeout"),
    ],
)
def test_bad_apps_are_refused(store: Store, kwargs: dict[str, Any], match: str) -> None:
    args = {"name": "sim", "command": "./sim {n}", **kwargs}
    with pytest.raises(InvalidSpec, match=match):
        store.add_app(args.pop("name"), args.pop("command"), **args)
    assert store.apps() == []


def test_tasks_start_by_their_parents(store: Store) -> None:
    store.add_app("sim", "./sim --n {n}", defaults={"cores": 2, "walltime": 300})
    done, failed, running = store.add_tasks([{"app": "sim", "params": {"n": i}} for i in range(3)])
    _move(store, done, "RUNNING", "RUN_DONE", "FINISHED")
    _move(store, failed, "RUNNING", "RUN_ERROR", "FAILED")
    _move(store, running, "RUNNING")
    rows = [
        {"app": "sim", "params": {"n": 1}, "name": "free"},
        {"app": "sim", "params": {"n": 2}, "parents": [done]},
        {"app": "sim", "params": {"n": 3}, "parents": [done, running], "name": "waits"},
        {"app": "sim", "params": {"n": 4}, "parents": [failed]},
        {"app": "sim", "params": {"n": 5}, "parents": [failed, done], "on_parent_failure": "run"},
        {"app": "sim", "params": {"n": 6}, "parents": [failed, running], "on_parent_failure": "run"},
        {"function": "mypkg.post:collect", "args": [1], "params": {"k": [1, 2]}, "parents": ["free", "waits"]},
    ]
    ids = store.add_tasks(rows)
    states = [store.task(i).state for i in ids]
    assert states == ["READY", "READY", "AWAITING_PARENTS", "FAILED", "READY", "AWAITING_PARENTS", "AWAITING_PARENTS"]
    assert [e.to_state for e in store.history(ids[3])] == ["FAILED"]
    assert store.history(ids[3])[0].message == f"parent {failed} is FAILED (on_parent_failure=fail)"
    assert store.history(ids[0])[0].from_state == "CREATED"
    fn = store.task(ids[-1])
    assert (fn.kind, fn.function, fn.args, fn.params, fn.parents) == (
        "python", "mypkg.post:collect", [1], {"k": [1, 2]}, [ids[0], ids[2]])  # fmt: skip
    first = store.task(ids[0])
    assert (first.app, first.app_version, first.cores, first.walltime, first.kind) == ("sim", 1, 2, 300.0, "app")
    assert first.spec["command"] == "./sim --n {n}" and first.params == {"n": 1} and first.target == "sim@1"
    # the shape counters moved with the rows (FAILED at birth counts as FAILED)
    summary = store.summary()
    assert summary["READY"] == 3 and summary["AWAITING_PARENTS"] == 3 and summary["FAILED"] == 2


def test_kinds_defaults_and_staging(store: Store) -> None:
    store.add_app("mpi", "./solver {deck}", defaults={"nodes": 2, "ranks_per_node": 4, "launcher": "mpich",
                                                      "env": {"OMP_PLACES": "cores"}})  # fmt: skip
    ids = store.add_tasks([
        {"app": "mpi", "params": {"deck": "a b"}, "nodes": 3, "env": {"X": 1}, "tags": {"exp": "s"}},
        {"function": "pkg.m:f", "cores": 4, "gpus": 1, "walltime": "1:00:00"},
        {"app": "mpi", "params": {"deck": "d"}, "stage_in": ["host:/data/in.h5", {"src": "file:///x/y", "dest": "y2"}],
         "stage_out": [{"src": "out/*.h5", "dest": "/project/"}], "input_files": ["*.dat"], "workdir": "runs/d"},
    ])  # fmt: skip
    big, fn, staged = (store.task(i) for i in ids)
    assert (big.kind, big.nodes, big.ranks_per_node, big.cores) == ("mpi", 3, 4, 4)
    assert big.spec["env"] == {"OMP_PLACES": "cores", "X": "1"} and big.spec["launcher"] == "mpich"
    assert big.tags == {"exp": "s"} and big.params == {"deck": "a b"}
    assert (fn.kind, fn.cores, fn.gpus, fn.walltime) == ("python", 4, 1, 3600.0)
    assert staged.stage_in == [{"src": "host:/data/in.h5", "dest": "in.h5"}, {"src": "file:///x/y", "dest": "y2"}]
    assert staged.stage_out == [{"src": "out/*.h5", "dest": "/project/"}] and staged.input_files == ["*.dat"]
    assert staged.spec["workdir"] == "runs/d" and big.stage_in is None and big.on_parent_failure == "fail"


GOOD = {"app": "sim", "params": {"n": 1}}
#: (what a bad row changes in a good one, None removing a field; the field named; the message)
BAD_ROWS: list[tuple[Any, str, str]] = [
    ({"colour": "red"}, "colour", r"'colour' is not a field; fields are app, version"),
    ({"app": "nosuch"}, "app", r"app 'nosuch' is not in the store \(apps: sim\); add it with balsam-dask app add"),
    ({"app": None}, "app", r"a task runs an app or a function: give one of app='sim'"),
    ({"function": "m:f"}, "app", r"a task runs an app or a function: .*, not both"),
    ({"app": None, "function": "m.f"}, "function", r"function='m\.f' is invalid: give an import path package\.modu"),
    ({"version": 9}, "version", r"version=9 is invalid: give a version of sim \(1\), e\.g\. version=1"),
    ({"params": None}, "params", r"template './sim --n \{n:03d\}' needs parameter 'n'; pass params=\{'n': \.\.\.\}"),
    ({"params": {"n": "x"}}, "params", r"template .* cannot be rendered at '\{n:03d\}' .*ValueError"),
    ({"params": {"n": 1, "z": float("nan")}}, "params", r"params=.* is invalid: give JSON values"),
    ({"args": [1]}, "args", r"args=\[1\] is for function tasks"),
    ({"nodes": 0}, "nodes", r"nodes=0 is invalid: give an integer >= 1, e\.g\. nodes=2"),
    ({"cores": 2, "threads_per_rank": 2}, "cores", r"cores=2 and threads_per_rank=2 are both given: give one"),
    ({"walltime": -1}, "walltime", r"walltime=-1 is invalid: give a positive"),
    ({"tags": {"1x": 2}}, "tags", r"tag name '1x' is invalid"),
    ({"env": {"A B": 1}}, "env", r"env=\{'A B': 1\} is invalid: give variable names"),
    ({"launcher": "nope"}, "launcher", r".*'nope'"),
    ({"name": "a/b"}, "name", r"name='a/b' is invalid"),
    ({"parents": ["later"]}, "parents", r"parent 'later' is no earlier row's name"),
    ({"parents": [0]}, "parents", r"parents=0 is invalid: give task ids"),
    ({"on_parent_failure": "x"}, "on_parent_failure", r"on_parent_failure='x' is invalid: give one of fail, run"),
    ({"input_files": ["/etc/*"]}, "input_files", r"input_files='/etc/\*' is invalid: give a path rel"),
    ({"stage_in": [{"src": "a", "dest": "../b"}]}, "stage_in", r"stage_in\.dest='\.\./b' is invalid"),
    ({"stage_out": [{"src": "*.h5"}]}, "stage_out", r"stage_out=\{'src': '\*\.h5'\} is invalid: give a \{src, d"),
    ({"workdir": "/abs"}, "workdir", r"workdir='/abs' is invalid"),
    ("app=sim", "row", r"'app=sim' is not a mapping of fields; give e\.g\. \{'app': 'sim'"),
]


@pytest.mark.parametrize(("change", "field", "match"), BAD_ROWS, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD_ROWS)])
def test_one_bad_row_writes_nothing(store: Store, change: Any, field: str, match: str) -> None:
    store.add_app("sim", "./sim --n {n:03d}")
    store.add_tasks([{"app": "sim", "params": {"n": 0}}])
    before = _counts(store)
    row = change if isinstance(change, str) else {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(InvalidTaskRow, match=rf"^row 2, field '{field}': {match}") as info:
        store.add_tasks([GOOD, row, GOOD], labels=None)
    assert (info.value.index, info.value.field) == (1, field)
    assert str(info.value).endswith("; nothing was written")
    assert _counts(store) == before


def test_missing_parents_and_labels(store: Store) -> None:
    store.add_app("sim", "./sim")
    before = _counts(store)
    with pytest.raises(InvalidTaskRow, match=r"^tasks\.csv line 3, field 'parents': no task with id 424242 in .*; "
                       r"give a stored task's id"):  # fmt: skip
        store.add_tasks([{"app": "sim"}, {"app": "sim", "parents": [424242]}],
                        labels=["tasks.csv line 2", "tasks.csv line 3"])  # fmt: skip
    with pytest.raises(InvalidTaskRow, match=r"^row 3, field 'parents': parent 'twin' names several earlier rows"):
        store.add_tasks([{"app": "sim", "name": "twin"}, {"app": "sim", "name": "twin"},
                         {"app": "sim", "parents": "twin"}])  # fmt: skip
    assert _counts(store) == before


def test_modify(store: Store) -> None:
    store.add_app("sim", "./sim --n {n}")
    (client,) = store.create_tasks([TaskSpec(name="client")])
    ids = store.add_tasks([{"app": "sim", "params": {"n": i}, "tags": {"exp": "a"}} for i in range(4)])
    _move(store, ids[3], "RUNNING")
    out = store.modify_tasks({"params": {"m": 1}, "walltime": "20m", "cores": 3, "tags": {"k": "v"}},
                             tags={"exp": "a"})  # fmt: skip
    assert out == (3, 1)  # the running one is skipped
    t = store.task(ids[0])
    assert t.params == {"n": 0, "m": 1} and (t.cores, t.walltime, t.threads_per_rank) == (3, 1200.0, 3)
    assert t.tags == {"exp": "a", "k": "v"} and t.spec["walltime"] == 1200.0
    assert {(b.cores, b.walltime): b.counts for b in store.backlog()}[(3, 1200.0)] == {"READY": 3}
    with pytest.raises(InvalidSpec, match=rf"cannot modify task {ids[3]}: it is RUNNING; only tasks waiting"):
        store.modify_tasks({"priority": 5}, ids=[ids[0], ids[3]])
    with pytest.raises(InvalidSpec, match=rf"cannot modify task {client}: it is a client's task"):
        store.modify_tasks({"priority": 5}, ids=[client])
    with pytest.raises(InvalidTaskRow, match=rf"^task {ids[0]}, field 'nodes': nodes=0 is invalid"):
        store.modify_tasks({"nodes": 0}, ids=[ids[0]])
    with pytest.raises(InvalidSpec, match=r"'app' cannot be modified; modifiable fields are params, args, name"):
        store.modify_tasks({"app": "other"}, ids=[ids[0]])
    with pytest.raises(InvalidSpec, match=r"modify needs task ids or a filter"):
        store.modify_tasks({"priority": 1})
    with pytest.raises(UnknownTask, match="no task with id 99"):
        store.modify_tasks({"priority": 1}, ids=[99])
    with store.engine.begin() as conn:  # a service claimed it
        claimed = update(tasks_t).where(tasks_t.c.id == ids[1])
        conn.execute(claimed.values(lease_owner=7, lease_expires=time.time() + 60))
    assert store.modify_tasks({"priority": 2}, tags={"exp": "a"}) == (2, 2)
    assert store.task(ids[1]).priority == 0 and store.task(ids[2]).priority == 2


def test_retry(store: Store) -> None:
    store.add_app("sim", "./sim")
    parent, other = store.add_tasks([{"app": "sim", "name": "p"}, {"app": "sim"}])
    (child,) = store.add_tasks([{"app": "sim", "parents": [parent]}])
    for tid in (parent, other):
        _move(store, tid, "RUNNING", "RUN_ERROR", "FAILED")
    # the parent's end settles its waiting child in the same transaction
    assert store.task(child).state == "FAILED"
    assert store.history(child)[-1].message == f"parent {parent} is FAILED (on_parent_failure=fail)"
    (late,) = store.add_tasks([{"app": "sim", "parents": [parent]}])
    assert store.task(late).state == "FAILED"
    with pytest.raises(InvalidSpec, match=rf"cannot retry task {late}: its parent {parent} is FAILED .*retry the "
                       "parent too"):  # fmt: skip
        store.retry_tasks(ids=[late])
    assert store.retry_tasks(state="FAILED") == (4, 0)
    assert store.task(other).state == "RESTART_READY" and store.task(late).state == "AWAITING_PARENTS"
    assert store.task(child).state == "AWAITING_PARENTS"
    assert [e.to_state for e in store.history(late)][-2:] == ["RESTART_READY", "AWAITING_PARENTS"]
    with pytest.raises(InvalidSpec, match=rf"cannot retry task {other}: it is RESTART_READY, not FAILED"):
        store.retry_tasks(ids=[other])


def test_kill_settles_the_dag(store: Store) -> None:
    store.add_app("sim", "./sim")
    (client,) = store.create_tasks([TaskSpec(name="client")])
    ids = store.add_tasks([
        {"app": "sim", "name": "root"}, {"app": "sim", "name": "other"},
        {"app": "sim", "name": "kid", "parents": ["root"]},
        {"app": "sim", "name": "grandkid", "parents": ["kid", "other"]},
        {"app": "sim", "name": "tolerant", "parents": ["root"], "on_parent_failure": "run"},
        {"app": "sim", "name": "running"},
    ])  # fmt: skip
    root, _, kid, grandkid, _, running = ids
    _move(store, running, "RUNNING")
    out = store.kill_tasks(ids=[root, running, client])
    assert out == (1, 2)
    assert [store.task(i).state for i in ids] == ["KILLED", "READY", "FAILED", "FAILED", "READY", "RUNNING"]
    assert store.history(kid)[-1].message == f"parent {root} is KILLED (on_parent_failure=fail)"
    assert store.history(grandkid)[-1].message == f"parent {kid} is FAILED (on_parent_failure=fail)"
    assert sorted(store.kill_requests()) == sorted([client, running])
    assert store.summary() == {"READY": 2, "RUNNING": 1, "FAILED": 2, "KILLED": 1, "CREATED": 1}


def test_remove(store: Store) -> None:
    store.add_app("sim", "./sim")
    (client,) = store.create_tasks([TaskSpec(name="client")])
    parent, lone, ran = store.add_tasks([{"app": "sim", "name": "p"}, {"app": "sim"}, {"app": "sim"}])
    (child,) = store.add_tasks([{"app": "sim", "parents": [parent]}])
    _move(store, parent, "RUNNING", "RUN_DONE", "FINISHED")
    _move(store, ran, "RUNNING", "RUN_ERROR", "RESTART_READY")
    with pytest.raises(InvalidSpec, match=rf"cannot remove task {parent}: its child {child} has not ended"):
        store.remove_tasks(ids=[parent])
    with pytest.raises(InvalidSpec, match=rf"cannot remove task {client}: it is CREATED: a client's task is "
                       "removed once it has ended"):  # fmt: skip
        store.remove_tasks(ids=[client])
    with pytest.raises(InvalidSpec, match=rf"cannot remove task {ran}: it is RESTART_READY: kill it first"):
        store.remove_tasks(ids=[ran])
    assert store.remove_tasks(state="FINISHED") == (0, 1)  # kept for its waiting child
    assert store.remove_tasks(ids=[child, lone]) == (2, 0)  # never started: they may go
    assert store.remove_tasks(state="FINISHED") == (1, 0)
    assert store.count() == 2 and {e.task_id for e in store.events()} == {ran}
    assert store.summary() == {"CREATED": 1, "RESTART_READY": 1}
    with pytest.raises(InvalidSpec, match=r"rm needs task ids or a filter"):
        store.remove_tasks()


def test_remove_app_while_tasks_use_it(store: Store) -> None:
    store.add_app("sim", "./sim")
    (tid,) = store.add_tasks([{"app": "sim"}])
    with pytest.raises(InvalidSpec, match=rf"app sim has 1 unfinished task\(s\) \(e\.g\. task {tid}\)"):
        store.remove_app("sim")
    store.kill_tasks(ids=[tid])
    assert store.remove_app("sim") == 1 and store.apps() == []
    with pytest.raises(UnknownApp, match="no app named 'sim'"):
        store.remove_app("sim")


@pytest.mark.slow
def test_100000_rows_in_one_go(tmp_path: Any) -> None:
    """A sweep of 100,000 parameter sets: checked, then written in one transaction (the rate is
    measured by benchmarks/taskdb_bench.py)."""
    with Store(f"sqlite:///{tmp_path}/big.db") as store:
        store.add_app("sim", "./sim --n {n} --out out-{n}.h5", defaults={"walltime": 60})
        ids = store.add_tasks([{"app": "sim", "params": {"n": i}, "tags": {"exp": "big"}} for i in range(100_000)])
        assert len(ids) == 100_000 == store.count(state="READY", tags={"exp": "big"})
        assert store.summary() == {"READY": 100_000} and len(store.events()) == 100_000
        assert store.task(ids[-1]).params == {"n": 99_999}
