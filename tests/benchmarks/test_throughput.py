"""benchmarks/throughput.py on a tiny run: (b) recorded on (a)'s own cluster, the plugin
removed after each (b) run, and the figures line complete."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import throughput

from balsam_dask.store import Store


@pytest.mark.slow
def test_b_runs_on_the_bare_cluster_and_records_only_its_own_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # main() moves into its work directory
    n = 30
    figures = throughput.main(["--tasks", str(n), "--repeat", "2", "--workers", "2", "--latency-samples", "2",
                               "--backends", "sqlite", "--workdir", str(tmp_path / "w")])  # fmt: skip
    out = capsys.readouterr().out
    assert "(b) on (a)'s cluster" in out
    assert json.loads(out.strip().splitlines()[-1]) == figures
    for key in ("a_tasks_per_s", "b_sqlite_tasks_per_s", "c_sqlite_tasks_per_s", "ratio_b_over_a_sqlite",
                "paired_b_over_a_sqlite", "latency_bare_ms", "latency_balsam_sqlite_ms"):  # fmt: skip
        assert figures[key] > 0, key
    # (b)'s store holds (b)'s runs only, each a warm-up and a timed run, every task finished:
    # the plugin recorded nothing of the (a) runs before or after it on the same cluster
    with Store(f"sqlite:///{tmp_path}/w/b_sqlite.db") as store:
        tasks = store.tasks(limit=None)
        assert len(tasks) == 2 * 2 * n
        assert {t.state for t in tasks} == {"FINISHED"}
        assert {t.kind for t in tasks} == {"dask"}
    with Store(f"sqlite:///{tmp_path}/w/c_sqlite.db") as store:
        assert len(store.tasks(limit=None)) == 2 * (2 * n + 2)  # and (c)'s latency samples


def test_b_on_a_cluster_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    throughput.main(["--tasks", "20", "--repeat", "1", "--workers", "1", "--latency-samples", "1",
                     "--backends", "sqlite", "--b-cluster", "own", "--workdir", str(tmp_path / "w")])  # fmt: skip
    assert "(b) on its own cluster" in capsys.readouterr().out
    with Store(f"sqlite:///{tmp_path}/w/b_sqlite.db") as store:
        assert len(store.tasks()) == 2 * 20


def test_a_bad_b_cluster_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        throughput.main(["--b-cluster", "shared"])
    assert e.value.code == 2
    assert "invalid choice: 'shared' (choose from 'same', 'own')" in capsys.readouterr().err


BAD_SIZES = [("--tasks", "0", 1), ("--repeat", "-3", 1), ("--workers", "two", 1), ("--latency-samples", "-1", 0)]


@pytest.mark.parametrize(("option", "value", "minimum"), BAD_SIZES)
def test_bad_sizes_are_refused(option: str, value: str, minimum: int, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        throughput.main([option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: '{value}' is not a whole number >= {minimum} (for example 2000)" in err
