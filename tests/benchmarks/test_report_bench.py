"""benchmarks/report_bench.py on a tiny run: the store it writes, ours and the pandas baseline
agreeing on every figure (it stops otherwise), the figures line complete; bad sizes refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import report_bench

import balsam_dask


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_tiny_run_agrees_with_its_baseline(backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if backend == "postgresql":
        from tests.conftest import pg_base_url

        pg = ["--pg-url", pg_base_url()]
    else:
        pg = []
    figures = report_bench.main(["--tasks", "500", "--repeat", "2", "--backends", backend, "--workdir",
                                 str(tmp_path), *pg])  # fmt: skip
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == figures
    for key in ("ours_s", "baseline_s", "ours_client_cpu_s", "baseline_client_cpu_s", "ratio_baseline_over_ours"):
        assert figures[f"{backend}_{key}"] > 0, key
    if backend == "sqlite":
        r = balsam_dask.report(tmp_path / "report-500.db")
        assert r.summary["tasks"] == 500 and r.summary["allocations"] == 4 and 0 < r.summary["utilization"] <= 1


def test_bad_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        report_bench.main(["--tasks", "0"])
    assert e.value.code == 2
    assert "argument --tasks: '0' is not a whole number >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        report_bench.main(["--backends", "mysql"])
    assert e.value.code == 2
    assert "'mysql' is not sqlite or postgresql" in capsys.readouterr().err
