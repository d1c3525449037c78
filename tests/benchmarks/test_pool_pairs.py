"""benchmarks/pool_pairs.py: paired ratios read from throughput.py's repetition lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import pool_pairs

RUN_1 = """# 2000 no-op tasks, 4 single-thread workers, 2 interleaved repetitions, (b) on (a)'s cluster
rep 1: a=1000/s (1650 us CPU), b_sqlite=900/s (2095 us CPU), b_postgresql=1100/s (1680 us CPU)
rep 2: a=800/s (1845 us CPU), b_sqlite=800/s (1765 us CPU), b_postgresql=720/s (1780 us CPU)
a_tasks_per_s                    900.0
"""
RUN_2 = "rep 1: a=500/s (1 us CPU), b_sqlite=475/s (1 us CPU), b_postgresql=450/s (1 us CPU)\n"


def test_pairs_each_repetition_with_its_own_a_and_pools_runs(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert pool_pairs.paired_ratios(RUN_1.splitlines()) == {"b_sqlite": [0.9, 1.0], "b_postgresql": [1.1, 0.9]}
    (tmp_path / "1.log").write_text(RUN_1)
    (tmp_path / "2.log").write_text(RUN_2)
    figures = pool_pairs.main([str(tmp_path / "1.log"), str(tmp_path / "2.log")])
    assert figures["pairs_b_sqlite"] == 3
    assert figures["paired_b_sqlite_over_a"] == 0.95  # median of 0.9, 1.0, 0.95
    assert figures["paired_b_postgresql_over_a"] == 0.9  # median of 1.1, 0.9, 0.9
    assert figures["paired_b_sqlite_over_a_ci95_low"] <= 0.95 <= figures["paired_b_sqlite_over_a_ci95_high"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures


def test_a_file_without_repetitions_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.log").write_text("a_tasks_per_s 900\n")
    with pytest.raises(
        SystemExit, match=r"no 'rep N: a=\.\.\./s, \.\.\.' lines in .*x\.log: give throughput.py's output"
    ):
        pool_pairs.main([str(tmp_path / "x.log")])
    with pytest.raises(SystemExit, match=r"usage: python benchmarks/pool_pairs.py RUN.log"):
        pool_pairs.main([])
