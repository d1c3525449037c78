"""Rows of database tasks and app definitions, checked without a store (pure), and task files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from balsam_dask.errors import InvalidSpec, InvalidTaskRow
from balsam_dask.store.ops import DbTask
from balsam_dask.taskdb.apps import AppDef
from balsam_dask.taskdb.files import load_task_file
from balsam_dask.taskdb.rows import FIELDS, RowChecker, TaskRow, check_rows

SIM = AppDef("sim", "./sim --n {n} --out '{out}.h5'", 1, defaults={"cores": 2, "walltime": "5m", "env": {"A": "1"}})
MPI = AppDef("mpi", ["./solver", "{deck}"], 3, defaults={"nodes": 2, "ranks_per_node": 4, "launcher": "mpich"})
APPS = {"sim": {1: SIM}, "mpi": {2: AppDef("mpi", "./old {deck}", 2), 3: MPI}}


def test_a_task_row_ends_with_the_database_columns() -> None:
    """The store writes ``TaskRow[2:11]`` as a DbTask (the columns only database tasks have)."""
    assert TaskRow._fields[2:11] == DbTask._fields


def test_rows_share_specs_and_keep_their_own_values() -> None:
    rows = check_rows([{"app": "sim", "params": {"n": i, "out": f"o{i}"}} for i in range(3)], APPS)
    assert len({id(r.spec) for r in rows}) == 1  # one spec, made once
    spec = rows[0].spec
    assert (spec.kind, spec.resources.cores, spec.resources.walltime, dict(spec.env)) == ("app", 2, 300.0, {"A": "1"})
    assert [r.params for r in rows] == ['{"n":0,"out":"o0"}', '{"n":1,"out":"o1"}', '{"n":2,"out":"o2"}']
    assert (rows[0].app, rows[0].app_version, rows[0].function, rows[0].on_parent_failure) == ("sim", 1, None, "fail")
    # a value equal to another but of another type does not share its spec: True is not 1
    ones = RowChecker(APPS)
    ones.check({"app": "sim", "params": {"n": 1, "out": "x"}, "retries": 1})
    with pytest.raises(InvalidTaskRow, match=r"field 'retries': retries=True is invalid"):
        ones.check({"app": "sim", "params": {"n": 1, "out": "x"}, "retries": True})


@pytest.mark.parametrize(
    ("row", "want"),
    [
        ({"app": "sim", "params": {"n": 1, "out": "o"}, "cores": 4}, ("app", 1, 1, 4, 0)),
        ({"app": "sim", "params": {"n": 1, "out": "o"}, "threads_per_rank": 3}, ("app", 1, 1, 3, 0)),
        ({"app": "mpi", "params": {"deck": "d"}}, ("mpi", 2, 4, 1, 0)),
        ({"app": "mpi", "version": 2, "params": {"deck": "d"}}, ("app", 1, 1, 1, 0)),
        ({"app": "mpi", "params": {"deck": "d"}, "nodes": 1, "ranks_per_node": 1}, ("mpi", 1, 1, 1, 0)),
        ({"function": "m:f", "gpus": 2, "cores": 3}, ("python", 1, 1, 3, 2)),
        ({"function": "m:f", "ranks_per_node": 2, "gpus_per_rank": 1}, ("mpi", 1, 2, 1, 1)),
    ],
)
def test_kinds_and_resources(row: dict[str, Any], want: tuple[Any, ...]) -> None:
    (r,) = check_rows([row], APPS)
    res = r.spec.resources
    assert (r.spec.kind, res.nodes, res.ranks_per_node, res.threads_per_rank, res.gpus_per_rank) == want


def test_a_function_row_may_run_isolated_in_a_process_of_its_own(tmp_path: Path) -> None:
    plain, isolated = check_rows([{"function": "m:f"}, {"function": "m:f", "isolate": True}], APPS)
    assert (plain.spec.isolate, isolated.spec.isolate) == (False, True)
    with pytest.raises(InvalidTaskRow, match=r"field 'isolate': isolate='yes please' is invalid: give True or False"):
        check_rows([{"function": "m:f", "isolate": "yes please"}], APPS)
    f = tmp_path / "t.csv"
    f.write_text("function,isolate\nm:f,true\nm:f,0\nm:f,maybe\n")
    rows, labels = load_task_file(f)
    assert [r["isolate"] for r in rows] == [True, False, "maybe"]
    with pytest.raises(InvalidTaskRow, match=r"^t\.csv line 4, field 'isolate': isolate='maybe' is invalid"):
        check_rows(rows, APPS, labels)


def test_parents_by_id_and_by_earlier_name() -> None:
    rows = check_rows([{"function": "m:f", "name": "a"}, {"function": "m:f", "name": "b", "parents": "a"},
                       {"function": "m:f", "parents": [7, "a", "b", 7, "a"]}], APPS)  # fmt: skip
    assert [(r.parent_ids, r.parent_rows) for r in rows] == [((), ()), ((), (0,)), ((7,), (0, 1))]


def test_labels_are_read_only_for_the_bad_row() -> None:
    class Labels(list[str]):
        read: list[int] = []

        def __getitem__(self, i: Any) -> Any:
            self.read.append(i)
            return super().__getitem__(i)

    labels = Labels(["a.yaml line 1", "a.yaml line 4", "a.yaml line 9"])
    with pytest.raises(InvalidTaskRow, match=r"^a\.yaml line 4, field 'nodes'") as info:
        check_rows([{"function": "m:f"}, {"function": "m:f", "nodes": "2"}, {"function": "m:f"}], APPS, labels)
    assert labels.read == [1] and info.value.index == 1


@pytest.mark.parametrize(
    ("items", "dests"),
    [
        (["/data/in.h5"], ["in.h5"]),
        (["host:/data/run/"], ["run"]),
        (["file:///x/y.txt", "rsync://h/m/z"], ["y.txt", "z"]),
        ([{"src": "rel/a.txt", "dest": "inputs/a.txt"}], ["inputs/a.txt"]),
    ],
)
def test_stage_in_destinations(items: list[Any], dests: list[str]) -> None:
    import json

    (r,) = check_rows([{"function": "m:f", "stage_in": items}], APPS)
    assert [i["dest"] for i in json.loads(r.stage_in or "[]")] == dests


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"command": []}, r"command=\[\] is empty"),
        ({"command": ["./a", 3]}, r"command entry 3 .* every entry must be a string"),
        ({"description": 5}, r"description=5 is invalid: give a string"),
        ({"defaults": {"gpus": -1}}, r"gpus=-1 is invalid: give an integer >= 0"),
        ({"defaults": {"env": {"X": [1]}}}, r"env\.X=\[1\] is invalid: give a string or a number"),
        ({"hooks": ["m:f"]}, r"hooks=\['m:f'\] is invalid: give a mapping of pre, post, error, timeout"),
    ],
)
def test_bad_app_definitions(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidSpec, match=match):
        AppDef(**{"name": "a", "command": "./a", **kwargs})


def test_fields_are_documented_in_the_checker() -> None:
    assert {"app", "function", "params", "parents", "stage_in", "stage_out", "input_files"} <= set(FIELDS)


# --- task files ---


def test_yaml_rows_and_the_line_of_a_bad_one(tmp_path: Path) -> None:
    f = tmp_path / "tasks.yaml"
    f.write_text("# a sweep\n- app: sim\n  params: {n: 1, out: a}\n\n- app: sim\n  nodes: 0\n  params: {n: 2}\n")
    loaded = load_task_file(f)
    assert loaded.rows == [{"app": "sim", "params": {"n": 1, "out": "a"}}, {"app": "sim", "nodes": 0,
                                                                            "params": {"n": 2}}]  # fmt: skip
    with pytest.raises(InvalidTaskRow, match=r"^tasks\.yaml line 5, field 'nodes': nodes=0 is invalid"):
        check_rows(loaded.rows, APPS, loaded.labels)
    f.write_text("- app: sim\n  params: {n: 1\n")
    with pytest.raises(InvalidSpec, match=r"^tasks\.yaml line 3 is not valid YAML"):
        load_task_file(f)
    f.write_text("app: sim\n")
    with pytest.raises(InvalidSpec, match=r"tasks\.yaml holds a dict: a task file is a list of tasks"):
        load_task_file(f)


def test_csv_columns(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text(
        "app,name,param.n,param.out,tag.exp,cores,walltime,parents,input_files,params,stage_out\n"
        'sim,a,1,o1,s,2,600,,,,\n'
        'sim,b,2,o2,s,,10m,a;123,*.h5;out/*.json,"{""extra"": [1, 2]}","[{""src"": ""*.h5"", ""dest"": ""/p/""}]"\n'
        "\n"
    )  # fmt: skip
    rows, labels = load_task_file(f)
    assert rows[0] == {"app": "sim", "name": "a", "params": {"n": "1", "out": "o1"}, "tags": {"exp": "s"}, "cores": 2,
                       "walltime": 600.0}  # fmt: skip
    assert rows[1]["parents"] == ["a", 123] and rows[1]["input_files"] == ["*.h5", "out/*.json"]
    assert rows[1]["params"] == {"n": "2", "out": "o2", "extra": [1, 2]} and rows[1]["walltime"] == "10m"
    assert rows[1]["stage_out"] == [{"src": "*.h5", "dest": "/p/"}] and list(labels) == ["t.csv line 2", "t.csv line 3"]
    checked = check_rows(rows, APPS, labels)
    assert checked[1].parent_rows == (0,) and checked[1].parent_ids == (123,)
    f.write_text("app,cores\nsim,x\n")
    rows, labels = load_task_file(f)
    with pytest.raises(InvalidTaskRow, match=r"^t\.csv line 2, field 'cores': cores='x' is invalid: give an integer"):
        check_rows(rows, APPS, labels)
    f.write_text("app,params\nsim,{}\nsim,[1]\n")
    with pytest.raises(InvalidTaskRow, match=r"^t\.csv line 3, field 'params': '\[1\]' is not a JSON object"):
        load_task_file(f)


def test_jsonl_and_unknown_files(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"function": "m:f", "args": [1]}\n\n{"function": "m:f", "args": [2]\n')
    with pytest.raises(InvalidTaskRow, match=r"^t\.jsonl line 3, field 'row': not valid JSON"):
        load_task_file(f)
    f.write_text('{"function": "m:f", "args": [1]}\n\n{"function": "m:f", "args": 2}\n')
    rows, labels = load_task_file(f)
    with pytest.raises(InvalidTaskRow, match=r"^t\.jsonl line 3, field 'args': args=2 is invalid: give a list"):
        check_rows(rows, APPS, labels)
    with pytest.raises(InvalidSpec, match=r"task file 't\.txt' has no known suffix: give a \.yaml"):
        load_task_file(tmp_path / "t.txt")
    with pytest.raises(InvalidSpec, match=r"cannot read the task file .*nothing\.csv: No such file"):
        load_task_file(tmp_path / "nothing.csv")


def test_a_plain_template_is_checked_by_names_and_another_by_rendering() -> None:
    from balsam_dask.template import plain

    assert plain("./sim --n {n} --out '{out}.h5'") and plain(["a", "{x}{y}"]) and plain("./sim")
    assert not plain("./sim {n:03d}") and not plain("{x!r}") and not plain("{cfg.name}") and not plain("{a[0]}")
    with pytest.raises(InvalidTaskRow, match=r"^row 1, field 'params': template .* needs parameter 'out'"):
        check_rows([{"app": "sim", "params": {"n": 1}}], APPS)
    fmt = {"f": {1: AppDef("f", "./f {x[0]}", 1)}}
    assert check_rows([{"app": "f", "params": {"x": [7]}}], fmt)[0].params == '{"x":[7]}'
    with pytest.raises(InvalidTaskRow, match=r"field 'params': template .* cannot be rendered at '\{x\[0\]\}'"):
        check_rows([{"app": "f", "params": {"x": []}}], fmt)
