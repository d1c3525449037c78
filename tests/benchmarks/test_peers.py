"""benchmarks/peers.py on a tiny run: every system's figures and the ratios in the JSON line, the
bundled row, Parsl's rows skipped when Parsl cannot be imported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import peers

TINY = ["--py-tasks", "6", "--sh-tasks", "3", "--rt-samples", "2", "--repeat", "1", "--workers", "1"]
FIGURES = {
    "dask": ["py_tasks_per_s", "sh_tasks_per_s", "rt_ms", "py_sched_cpu_us_per_task", "sh_sched_cpu_us_per_task"],
    "ours": ["py_tasks_per_s", "sh_tasks_per_s", "rt_ms", "py_sched_cpu_us_per_task", "sh_sched_cpu_us_per_task"],
    "bundled": ["py_tasks_per_s", "sh_tasks_per_s", "rt_ms", "py_sched_cpu_us_per_task", "sh_sched_cpu_us_per_task"],
    "serve": ["py_tasks_per_s", "sh_tasks_per_s", "py_wall_tasks_per_s", "sh_wall_tasks_per_s"],
    "parsl": ["py_tasks_per_s", "sh_tasks_per_s", "rt_ms"],
    "pool": ["py_tasks_per_s", "sh_tasks_per_s", "rt_ms"],
}


def expected_keys(systems: list[str]) -> list[str]:
    keys = [f"{s}_{f}" for s in systems for f in FIGURES[s]]
    for name, top, bottom in peers.RATIOS:
        if top.split("_")[0] in systems and bottom.split("_")[0] in systems:
            keys += [f"ratio_{name}", f"paired_{name}"]
    return keys


@pytest.mark.slow
def test_a_tiny_run_of_every_system(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = peers.main([*TINY, "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == figures
    systems = list(peers.SYSTEMS) if peers.have_parsl() else [s for s in peers.SYSTEMS if s != "parsl"]
    assert sorted(figures) == sorted(expected_keys(systems))
    for key, value in figures.items():
        assert value > 0, key
    assert any(line.startswith("bundled ") for line in out.splitlines())
    if not peers.have_parsl():
        assert "Parsl is not installed" in out


def test_parsl_is_skipped_when_it_cannot_be_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "parsl", None)  # import parsl raises ImportError
    figures = peers.main([*TINY, "--systems", "parsl,pool", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "# Parsl is not installed (pip install .[peers]): its rows and ratios are skipped" in out
    assert sorted(figures) == sorted(expected_keys(["pool"]))
    assert not any(line.startswith("parsl") for line in out.splitlines())


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        peers.main(["--systems", "dask,ray"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --systems: 'dask,ray' is not a list of dask, ours, bundled, serve, parsl, pool" in err
    with pytest.raises(SystemExit) as e:
        peers.main(["--rt-samples", "0"])
    assert e.value.code == 2
    assert "argument --rt-samples: '0' is not a whole number >= 1 (for example 2000)" in capsys.readouterr().err
