"""``balsam-dask report`` through the real entry point: the report of a real LocalEnsembleCluster
run (tables, PNG files, one self-contained HTML page), and bad input refused with exit code 2."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from distributed import wait

import balsam_dask
from balsam_dask.store import Store
from tests.clusters import ensemble
from tests.reports import scripted
from tests.test_cli import run_cli

PNGS = ["allocations.png", "delays.png", "overview.png", "throughput.png", "utilization.png"]


def work(i: int) -> int:
    time.sleep(0.02 * (i % 5))
    if i % 6 == 5:
        raise ValueError(f"bad input {i % 4}")
    return i


@pytest.mark.slow
def test_the_report_of_a_real_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/run.db"
    with ensemble(url, tmp_path) as (_, client):  # 2 nodes x 4 cores
        futures = client.map(work, range(36), retries=1, tags={"exp": "real"})
        wait(futures)
        client.flush()
    with Store(url, read_only=True) as s:
        (alloc,) = s.allocations()
    assert (alloc.info["cores_per_node"], alloc.info["gpus_per_node"], alloc.nodes) == (4, 0, 2)

    plots, page = tmp_path / "plots", tmp_path / "report.html"
    r = run_cli("--store", url, "report", "--png", str(plots), "--html", str(page))
    assert r.returncode == 0, r.stderr
    for text in ("36 tasks", "30 finished, 6 failed", "Throughput", "Utilization", "Allocations",
                 "ValueError: bad input 1", "ValueError: bad input 3"):  # fmt: skip
        assert text in r.stdout, text
    assert sorted(p.name for p in plots.iterdir()) == PNGS
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in plots.iterdir())
    html = page.read_text()
    assert html.count("src='data:image/png;base64,") == 4
    assert html.count("<table") == 9  # the summary and eight tables
    assert "ValueError: bad input 3" in html and "Run delays" in html and "node_hours" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html  # opens offline

    rep = balsam_dask.report(url)
    s = rep.summary
    assert (s["tasks"], s["finished"], s["failed"], s["runs"], s["retries"]) == (36, 30, 6, 42, 6)
    assert 0 < s["utilization"] <= 1 and 0 < s["node_utilization"] <= 1 and s["notes"] == []
    assert s["allocated_core_hours"] == pytest.approx(rep.allocations["running_s"].iloc[0] * 8 / 3600, rel=0.2)
    errors = {(e.state, e.message): (e.events, e.tasks) for e in rep.errors.itertuples()}
    assert errors == {
        ("RUN_ERROR", "ValueError: bad input 1"): (6, 3),
        ("RUN_ERROR", "ValueError: bad input 3"): (6, 3),
    }
    assert rep.durations.loc["work", "runs"] == 42
    assert int(rep.throughput["ended"].sum()) == 36
    # busy nodes from the stretches the writer kept equal those from every run (a filter reads the runs)
    every_run = balsam_dask.report(url, tags={"exp": "real"}, interval=rep.summary["interval_s"])
    assert list(rep.utilization["busy_nodes"]) == pytest.approx(list(every_run.utilization["busy_nodes"]))
    assert rep.utilization["busy_nodes"].max() > 1


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('report')}/small.db"
    with Store(url) as s:
        scripted.build(s)
    return url


def test_the_tables_of_a_scripted_run(small: str) -> None:
    r = run_cli("report", "--store", small, "--interval", "10", "--tag", "exp=a")
    assert r.returncode == 0, r.stderr
    assert "5 tasks" in r.stdout and "3 finished, 1 failed, 1 killed" in r.stdout and "RUN_ERROR" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "argument --since: time 'yesterday' is malformed; use an ISO time"),
        (["--tag", "exp"], "tag 'exp' is malformed; use --tag name=value"),
        (["--tag", "9x=1"], "tag name '9x' is invalid"),
        (["--since", "2026-01-02", "--until", "2026-01-01"], "is invalid: give a time after since="),
        (["--interval", "often"], "interval='often' is invalid: give a positive duration"),
        (["--png", "{file}/sub"], "/sub' cannot be written ("),
        (["--png", "{file}"], "is not a directory: give a directory for the PNG files, e.g. --png plots/"),
        (["--html", "{dir}/missing/r.html"], "/missing/r.html' cannot be written ("),
        (["--html", "{dir}"], "is a directory: give a file name, e.g. --html report.html"),
    ],
)
def test_bad_input_exits_2_naming_it(small: str, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("x")
    full = [a.format(file=tmp_path / "file", dir=tmp_path) for a in args]
    r = run_cli("--store", small, "report", *full)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written
