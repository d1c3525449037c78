"""The task database's commands: app add|ls|show|rm, submit (one task or a file), modify,
retry, kill, rm; happy paths in-process, errors through the real entry point (one line, no
traceback, non-zero exit, nothing written)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from balsam_dask.cli import main
from balsam_dask.spec import TaskSpec
from balsam_dask.store import Store, Transition
from balsam_dask.store.ops import Settle

BIN = str(Path(sys.executable).parent / "balsam-dask")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)


def _out(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> str:
    assert main(argv) == code
    return capsys.readouterr().out


def test_apps(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    cli = ["--store", store_url]
    _out(capsys, [*cli, "init"])
    out = _out(capsys, [*cli, "app", "add", "sim", "--command", "./sim --n {n} --out '{out}'", "--cores", "2",
                        "--walltime", "10m", "--env", "OMP_PLACES=cores", "--hook", "post=mypkg.hooks:collect",
                        "--description", "the simulation"])  # fmt: skip
    assert out == "app sim added: version 1: ./sim --n {n} --out '{out}'\n"
    again = _out(capsys, [*cli, "app", "add", "sim", "--command", "./sim --n {n} --out '{out}'", "--cores", "2",
                          "--walltime", "600", "--env", "OMP_PLACES=cores", "--hook", "post=mypkg.hooks:collect",
                          "--description", "the simulation"])  # fmt: skip
    assert again == "app sim is already stored as version 1: ./sim --n {n} --out '{out}'\n"
    out = _out(capsys, [*cli, "app", "add", "sim", "--argv-json", '["./sim", "--n", "{n}"]', "--launcher", "mpich"])
    assert out == "app sim added: version 2: ./sim --n '{n}'\n"
    lines = _out(capsys, [*cli, "app", "ls"]).splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "COMMAND", "DEFAULTS", "HOOKS"] and len(lines) == 3
    assert lines[1].startswith("sim   1") and lines[1].endswith("post")
    show = _out(capsys, [*cli, "app", "show", "sim", "--version", "1"])
    assert "app sim version 1 (versions: 1, 2)" in show and "the simulation" in show
    assert '"env": {"OMP_PLACES": "cores"}' in show and "post hook: mypkg.hooks:collect" in show
    assert _out(capsys, [*cli, "app", "rm", "sim", "--version", "2"]) == "removed 1 version(s) of app sim\n"
    assert [(a.name, a.version) for a in Store(store_url).apps()] == [("sim", 1)]


def test_submit_and_the_filters(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    cli = ["--store", store_url]
    with Store(store_url) as s:
        s.add_app("sim", "./sim --n {n}")
        (client,) = s.create_tasks([TaskSpec(name="client", tags={"exp": "a"})])
    out = _out(capsys, [*cli, "submit", "sim", "-p", "n=4", "--cores", "2", "--walltime", "5m", "--tag", "exp=a",
                        "--name", "first", "--retries", "2", "--priority", "3"])  # fmt: skip
    first = int(out.split()[2])
    assert out == f"added task {first} (READY 1)\n"
    out = _out(capsys, [*cli, "submit", "mypkg.tasks:fit", "-j", "alpha=0.5", "-j", "xs=[1, 2]", "--arg", "3",
                        "--parent", str(first), "--tag", "exp=a", "--stage-in", "host:/d/in.h5",
                        "--stage-out", "*.h5=/project/", "--input-file", "*.dat", "--isolate"])  # fmt: skip
    fit = int(out.split()[2])
    assert out == f"added task {fit} (AWAITING_PARENTS 1)\n"
    with Store(store_url) as s:
        t, f = s.task(first), s.task(fit)
    assert (t.params, t.cores, t.walltime, t.tags, t.name, t.priority, t.spec["retries"]) == (
        {"n": "4"}, 2, 300.0, {"exp": "a"}, "first", 3, 2)  # fmt: skip
    assert (t.spec["isolate"], f.spec["isolate"]) == (False, True)
    assert (f.function, f.params, f.args, f.parents, f.input_files) == (
        "mypkg.tasks:fit", {"alpha": 0.5, "xs": [1, 2]}, [3], [first], ["*.dat"])  # fmt: skip
    assert f.stage_in == [{"src": "host:/d/in.h5", "dest": "in.h5"}]
    assert f.stage_out == [{"src": "*.h5", "dest": "/project/"}]
    # ls and show see database tasks beside a client's
    lines = _out(capsys, [*cli, "ls", "--tag", "exp=a"]).splitlines()
    assert len(lines) == 4 and "client" in lines[1] and "first" in lines[2]
    assert len(_out(capsys, [*cli, "ls", "--id", str(fit), "--id", str(client)]).splitlines()) == 3
    show = _out(capsys, [*cli, "show", str(fit)])
    assert "runs: function mypkg.tasks:fit  on parent failure: fail" in show
    assert 'params: {"alpha": 0.5, "xs": [1, 2]}' in show and 'stage out: [{"dest": "/project/"' in show
    assert "runs:" not in _out(capsys, [*cli, "show", str(client)])

    assert main([*cli, "modify", "--tag", "exp=a", "--walltime", "20m", "-p", "m=1"]) == 0
    cap = capsys.readouterr()  # the client's task matched: not changed, and said so
    assert cap.out == "modified 2 task(s)\n"
    assert cap.err == "1 task(s) matched but are not database tasks waiting to run\n"
    with Store(store_url) as s:
        assert s.task(first).walltime == 1200.0 and s.task(first).params == {"n": "4", "m": "1"}
        s.apply([Transition(s.new_id(), first, "READY", "RUNNING", time.time()),
                 Transition(s.new_id(), first, "RUNNING", "RUN_ERROR", time.time()),
                 Transition(s.new_id(), first, "RUN_ERROR", "FAILED", time.time()), Settle(first)])  # fmt: skip
    # its end failed its child ``fit`` (settled with it): both are retried, fit waits for it again
    assert _out(capsys, [*cli, "retry", "--state", "FAILED"]) == "retried 2 task(s) (FAILED -> RESTART_READY)\n"
    out = _out(capsys, [*cli, "kill", str(fit), "--id", str(client)])
    assert out.startswith("killed 1 waiting task(s); kill requested for 1 unfinished task(s)")
    assert _out(capsys, [*cli, "rm", "--state", "KILLED"]) == "removed 1 task(s) and their events\n"
    with Store(store_url) as s:
        assert s.count() == 2 and s.task(first).state == "RESTART_READY" and s.kill_requests() == [client]


@pytest.mark.slow
def test_submit_a_file_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with Store(url) as s:
        s.add_app("sim", "./sim --n {n}")
    good = tmp_path / "tasks.yaml"
    good.write_text("- {app: sim, name: a, params: {n: 1}}\n- {app: sim, parents: [a], params: {n: 2}}\n"
                    "- {function: 'pkg.m:f', args: [1], tags: {exp: y}}\n")  # fmt: skip
    out = _out(capsys, ["--store", url, "submit", "--file", str(good)])
    assert out.startswith("added 3 tasks, ids ") and out.endswith("(AWAITING_PARENTS 1, READY 2)\n")
    lines = tmp_path / "tasks.jsonl"
    lines.write_text('{"app": "sim", "params": {"n": 1}}\n{"app": "sim", "params": {"n": 2}, "gpus": -1}\n')
    csv = tmp_path / "tasks.csv"
    csv.write_text("app,param.n,parents\nsim,1,\nsim,2,nosuch\n")
    yaml = tmp_path / "bad.yaml"
    yaml.write_text("- app: sim\n  params: {n: 1}\n- app: sim\n  params: {m: 1}\n")
    cases = [
        (["submit", "--file", str(lines)], "tasks.jsonl line 2, field 'gpus': gpus=-1 is invalid: give an integer"),
        (["submit", "--file", str(csv)], "tasks.csv line 3, field 'parents': parent 'nosuch' is no earlier row's"),
        (["submit", "--file", str(yaml)], "bad.yaml line 3, field 'params': template './sim --n {n}' needs param"),
        (["submit", "nosuch", "-p", "n=1"], "submit, field 'app': app 'nosuch' is not in the store (apps: sim)"),
        (["submit", "sim", "-p", "n=1", "--parent", "77"], "submit, field 'parents': no task with id 77 in"),
        (["submit", "sim", "--file", str(good)], "submit needs an app (or a function pkg.mod:fn) or --file"),
        (["submit", "--file", str(good), "--cores", "2"], "--file takes every field from the file: drop --cores"),
        (["submit", "--file", str(tmp_path / "x.txt")], "task file 'x.txt' has no known suffix"),
        (["app", "add", "sim2", "--command", "./a '{x}"], "cannot be split into arguments"),
        (["app", "add", "sim2"], "app add needs --command './sim --n {n}' (a template) or --argv-json"),
        (["app", "add", "sim2", "--command", "./a", "--hook", "pre"], "--hook 'pre' is malformed; use --hook NAME="),
        (["app", "show", "nosuch"], "no app named 'nosuch'"),
        (["app", "rm", "sim", "--version", "4"], "app sim has no version 4"),
        (["modify", "--state", "READY"], "modify needs a change, e.g. --walltime 20m"),
        (["modify", "--walltime", "1m"], "modify needs task ids or --tag, --state, --name filters"),
        (["retry"], "retry needs task ids or --tag, --state, --name filters"),
        (["rm"], "rm needs task ids or --tag, --state, --name filters"),
        (["submit", "sim", "-j", "n=[1"], "-j 'n=[1' is malformed; use -j NAME=JSON"),
    ]
    before = Store(url).count()
    for args, message in cases:
        r = run_cli("--store", url, *args)
        assert r.returncode in (1, 2) and "Traceback" not in r.stderr, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        if r.returncode == 1:
            assert len(r.stderr.splitlines()) == 1, r.stderr
    assert Store(url).count() == before
    r = run_cli("--store", url, "modify", "--id", "5", "--priority", "1")
    assert r.returncode == 1 and r.stderr == f"balsam-dask: error: no task with id 5 in sqlite:///{tmp_path}/s.db\n"


def test_read_commands_open_the_store_read_only(tmp_path: Path) -> None:
    import os

    db = tmp_path / "ro" / "s.db"
    db.parent.mkdir()
    with Store(str(db)) as s:
        s.add_app("sim", "./sim")
    os.chmod(db, 0o444)
    os.chmod(db.parent, 0o555)
    try:
        for args in (["app", "ls"], ["app", "show", "sim"]):
            r = run_cli("--store", str(db), *args)
            assert r.returncode == 0 and "sim" in r.stdout, r.stderr
        r = run_cli("--store", str(db), "submit", "sim")
        assert r.returncode == 1 and "cannot write the store" in r.stderr
    finally:
        os.chmod(db.parent, 0o755)
