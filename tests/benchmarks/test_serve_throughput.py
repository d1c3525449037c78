"""benchmarks/serve_throughput.py on a tiny run: every task of both kinds run by serve and as
futures, in fresh stores, and the figures line complete."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import serve_throughput

from balsam_dask.store import Store

KEYS = [f"{run}_{kind}_{figure}" for kind in ("app", "function") for run, figure in
        [("serve", "rows_per_s"), ("serve", "tasks_per_s"), ("serve", "wall_tasks_per_s"), ("serve", "delay_ms"),
         ("serve", "delay_after_start_ms"), ("futures", "tasks_per_s"), ("futures", "delay_ms")]] + [
    f"{how}_{label}_over_futures_{kind}" for how in ("ratio", "paired") for label in ("serve", "serve_wall")
    for kind in ("app", "function")]  # fmt: skip


@pytest.mark.slow
def test_a_tiny_run_serves_and_maps_every_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = 4
    figures = serve_throughput.main(["--tasks", str(n), "--repeat", "1", "--nodes", "1", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == figures
    assert sorted(figures) == sorted(KEYS)
    for key, value in figures.items():
        assert value > 0, key
    # each run had a fresh store holding its own tasks only, all finished (serve_throughput checks it too)
    for name, kinds in (("serve_app_0", ["app"]), ("serve_function_0", ["python"]), ("futures_0", ["app", "python"])):
        with Store(f"sqlite:///{tmp_path}/{name}.db") as store:
            tasks = store.tasks(limit=None)
            assert sorted(t.kind for t in tasks) == sorted(kinds * n)
            assert {t.state for t in tasks} == {"FINISHED"}
    with Store(f"sqlite:///{tmp_path}/serve_function_0.db") as store:
        assert {t.function for t in store.tasks(limit=None)} == {serve_throughput.FUNCTION}


def test_bad_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        serve_throughput.main(["--nodes", "0"])
    assert e.value.code == 2
    assert "argument --nodes: '0' is not a whole number >= 1 (for example 2000)" in capsys.readouterr().err
