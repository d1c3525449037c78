"""Specs: validation at construction, with messages that name the value and show a correct form."""

from __future__ import annotations

import pickle
from datetime import timedelta

import pytest

from balsam_dask.errors import (
    AppError,
    BalsamDaskError,
    IllegalTransition,
    InvalidSpec,
    InvalidTags,
    MPITaskError,
    TaskTimeout,
)
from balsam_dask.spec import NodeShape, Resources, TaskSpec, parse_duration, validate_tags


def test_resources_derived_values() -> None:
    r = Resources(nodes=3, ranks_per_node=4, threads_per_rank=2, gpus_per_rank=1, walltime="00:10:00")
    assert (r.cores, r.gpus, r.total_ranks, r.walltime, r.is_gang) == (8, 4, 12, 600.0, True)
    s = Resources.serial(cores=2, gpus=1, walltime="5m")
    assert (s.nodes, s.cores, s.gpus, s.walltime, s.is_gang) == (1, 2, 1, 300.0, False)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), (1.5, 1.5), ("01:00:00", 3600.0), ("1-00:00:00", 86400.0), ("10:30", 630.0),
     ("30m", 1800.0), ("2h", 7200.0), (timedelta(minutes=2), 120.0)],
)  # fmt: skip
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration("walltime", value) == seconds


@pytest.mark.parametrize("value", [0, -5, "soon", "", True, float("nan"), [1]])
def test_bad_durations(value: object) -> None:
    with pytest.raises(InvalidSpec, match=r"walltime=.* is invalid: give a positive duration.*walltime=600"):
        parse_duration("walltime", value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cores": 0}, r"cores=0 is invalid: give an integer >= 1, e.g. cores=2"),
        ({"cores": -2}, r"cores=-2 is invalid"),
        ({"cores": 1.5}, r"cores=1.5 is invalid"),
        ({"gpus": -1}, r"gpus=-1 is invalid: give an integer >= 0"),
        ({"cores": True}, r"cores=True is invalid"),
    ],
)
def test_bad_serial_resources(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        Resources.serial(**kwargs)  # type: ignore[arg-type]


def test_bad_mpi_resources() -> None:
    with pytest.raises(InvalidSpec, match=r"nodes=0 is invalid.*nodes=2"):
        Resources(nodes=0)
    with pytest.raises(InvalidSpec, match=r"ranks_per_node='4' is invalid"):
        Resources(ranks_per_node="4")  # type: ignore[arg-type]


def test_fit_error() -> None:
    node = NodeShape(cores=4, gpus=1)
    assert Resources.serial(4, 1).fit_error(node) is None
    assert "needs 8 cores per node but nodes have 4; use cores<=4" in (Resources.serial(8).fit_error(node) or "")
    assert "needs 2 GPUs per node but nodes have 1" in (Resources.serial(1, 2).fit_error(node) or "")


def test_tags() -> None:
    assert validate_tags({"b": 1, "a": True, "c": 0.5, "d": "x"}) == (
        ("a", "true"), ("b", "1"), ("c", "0.5"), ("d", "x"),
    )  # fmt: skip
    with pytest.raises(InvalidTags, match=r"tags=.* must be a mapping"):
        validate_tags(["a"])
    with pytest.raises(InvalidTags, match="tag name '1x' is invalid"):
        validate_tags({"1x": 1})
    with pytest.raises(InvalidTags, match=r"tag k=\[1\] is invalid: values must be str, int, float or bool"):
        validate_tags({"k": [1]})
    with pytest.raises(InvalidTags, match="too long"):
        validate_tags({"k": "x" * 300})


def test_taskspec() -> None:
    spec = TaskSpec(name="a", tags={"exp": 1}, env={"A": "1"}, kind="app", command="echo {x}", params={"x": 1})
    assert spec.tags == (("exp", "1"),) and spec.env == (("A", "1"),) and spec.params == (("x", 1),)
    assert spec.to_json()["command"] == "echo {x}" and spec.to_json()["params"] == {"x": 1}
    assert spec.runs_in_subprocess
    assert TaskSpec(timeout=5).runs_in_subprocess and not TaskSpec().runs_in_subprocess
    with pytest.raises(InvalidSpec, match="kind='job' is invalid: use one of python, app, mpi"):
        TaskSpec(kind="job")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match=r"nodes=2 needs an MPI task: use client.submit_mpi"):
        TaskSpec(resources=Resources(nodes=2))
    with pytest.raises(InvalidSpec, match=r"command=.* is invalid: give a list of strings"):
        TaskSpec(kind="app", command=("ls", 3))  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match="env entry 'A'=1 is invalid"):
        TaskSpec(kind="app", command="x", env={"A": 1})
    with pytest.raises(InvalidSpec, match="retries=-1 is invalid"):
        TaskSpec(retries=-1)
    with pytest.raises(InvalidSpec, match="priority='high' is invalid"):
        TaskSpec(priority="high")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        InvalidSpec("bad cores"),
        IllegalTransition("RUNNING", "CREATED", 3),
        AppError("./sim", 2, "boom", "/w"),
        TaskTimeout("app ./sim", 5.0, 2),
        MPITaskError(1, "ValueError", "bad", "Traceback..."),
    ],
)
def test_errors_pickle(error: BalsamDaskError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error) and isinstance(back, BalsamDaskError)


def test_every_public_name_imports_from_the_package_root() -> None:
    import balsam_dask

    for name in balsam_dask.__all__:
        assert getattr(balsam_dask, name) is not None, name
    from balsam_dask import LSFEnsembleCluster, PBSEnsembleCluster, SlurmEnsembleCluster

    assert {c.__name__ for c in (SlurmEnsembleCluster, PBSEnsembleCluster, LSFEnsembleCluster)} == {
        "SlurmEnsembleCluster", "PBSEnsembleCluster", "LSFEnsembleCluster"
    }  # fmt: skip
