"""``balsam-dask site init|check``: in-process through the CLI's main, bad input through the real
entry point (exit 2, one line, no traceback)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from balsam_dask.cli import main
from balsam_dask.taskdb.site import SCHEDULERS, site_template
from tests.test_cli import run_cli


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_site_init_then_check(tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "sites" / "mine"
    assert main(["site", "init", "--scheduler", scheduler, str(d)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {d}/site.yaml" in out and f"balsam-dask site check {d}" in out
    assert mode(d) == 0o700 and mode(d.parent) == 0o700 and mode(d / "site.yaml") == 0o600
    assert (d / "site.yaml").read_text() == site_template(scheduler)
    assert main(["site", "check", str(d)]) == 0
    out = capsys.readouterr().out
    assert f"{d}/site.yaml is valid" in out
    assert f"scheduler: {scheduler}" in out and f"store: {d}/balsam.db" in out and f"workdir: {d}" in out
    assert "node: " in out and "limits: 1-" in out and "serve: idle_ttl 300 s, lease 60 s" in out


def test_site_init_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    assert main(["site", "init", "--scheduler", "local", str(d)]) == 0
    (d / "site.yaml").write_text("scheduler: local\nlocal: {nodes: 1}\n")
    capsys.readouterr()
    assert main(["site", "init", "--scheduler", "slurm", str(d)]) == 2
    err = capsys.readouterr().err
    assert err == (f"balsam-dask: error: {d}/site.yaml exists: edit it, or overwrite it with --force, e.g. "
                   f"balsam-dask site init --scheduler slurm {d} --force\n")  # fmt: skip
    assert (d / "site.yaml").read_text() == "scheduler: local\nlocal: {nodes: 1}\n"  # untouched
    assert main(["site", "init", "--scheduler", "slurm", str(d), "--force"]) == 0
    assert yaml.safe_load((d / "site.yaml").read_text())["scheduler"] == "slurm"
    assert mode(d / "site.yaml") == 0o600


def test_site_init_into_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["site", "init", "--scheduler", "local", str(f)]) == 2
    assert capsys.readouterr().err == f"balsam-dask: error: {f} exists and is not a directory: give a directory, " \
                                      "e.g. ./mysite\n"  # fmt: skip


def test_site_check_reports_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "check", str(tmp_path / "nosuch")]) == 2
    assert "the site directory does not exist: create it with: balsam-dask site init" in capsys.readouterr().err
    (tmp_path / "site.yaml").write_text("scheduler: slurm\nnode: {cores_per_node: 8}\nbatch: {queue: 5}\n")
    assert main(["site", "check", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"balsam-dask: error: {tmp_path}/site.yaml: batch.queue=5 is invalid: give a "
                                       "queue name or null, e.g. queue: debug\n")  # fmt: skip


def test_bad_input_through_the_real_entry_point(tmp_path: Path) -> None:
    done = run_cli("site", "init", "--scheduler", "sge", str(tmp_path / "s"))
    assert done.returncode == 2 and "invalid choice: 'sge' (choose from 'local', 'slurm', 'pbs', 'lsf')" in done.stderr
    assert not (tmp_path / "s").exists()
    (tmp_path / "site.yaml").write_text("scheduler: local\nlimits:\n  idle_timout: 5\n  - x\n")
    done = run_cli("site", "check", str(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"balsam-dask: error: {tmp_path}/site.yaml: line 4, column 3: YAML syntax error")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    (tmp_path / "site.yaml").write_text("scheduler: local\nlimits:\n  idle_timout: 5\n")
    done = run_cli("site", "check", str(tmp_path))
    assert done.returncode == 2 and done.stderr == (f"balsam-dask: error: {tmp_path}/site.yaml: limits.idle_timout is "
                                                    "not a site key: did you mean limits.idle_timeout? e.g. "
                                                    "idle_timeout: 60\n")  # fmt: skip
    done = run_cli("site", "check", str(tmp_path / "nosuch"))
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
