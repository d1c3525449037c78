"""PBS and LSF ensemble jobs: exact script text, parsers on realistic output, and the real
submission code driven end to end through fake qsub/qstat/qdel and bsub/bjobs/bkill/blaunch
(tests/fakes) that run the jobs as local processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from balsam_dask import Client, Store
from balsam_dask.deploy.jobs import EnsembleJobSpec
from balsam_dask.deploy.systems import lsf, pbs, slurm
from balsam_dask.errors import AllocationError
from balsam_dask.protocol import ENV_VAR, NodeConfig
from tests.fakes import fakebatch

FAKES = Path(__file__).resolve().parents[1] / "fakes"
SPEC = dict(
    name="ens-1", scheduler="tcp://10.0.0.1:8786", nodes=4, walltime="01:30:00", cores_per_node=64,
    gpus_per_node=4, queue="debug", account="proj", job_script_prologue=("module load cuda",),
    log_directory="/scratch/logs", python="/opt/py/bin/python",
)  # fmt: skip
WORKER_ARGS = (
    "/opt/py/bin/python -m balsam_dask.node_worker tcp://10.0.0.1:8786 --name-prefix ens-1 --cores 64 --gpus 4 "
    '--end "$END" --drain-margin 60'
)
# each rank writes its own file in the task's work directory: rank, its host as Hydra named it, the allreduce
RANKS = (
    "import os; from mpi4py import MPI; c = MPI.COMM_WORLD; s = c.allreduce(c.rank + 1); "
    "open(f'rank-{c.rank}.txt', 'w').write(f\"{c.rank} {os.environ.get('PMI_HOSTNAME')} {s}\")"
)


# ----------------------------------------------------------------------------- job scripts
def test_pbs_job_script_text() -> None:
    spec = EnsembleJobSpec(**SPEC, job_extra_directives=("-l filesystems=home:eagle",))  # type: ignore[arg-type]
    assert pbs.job_script(spec) == (
        "#!/usr/bin/env bash\n"
        "#PBS -N ens-1\n"
        "#PBS -l select=4:ncpus=64:ngpus=4:mpiprocs=1\n"
        "#PBS -l place=scatter:excl\n"
        "#PBS -l walltime=01:30:00\n"
        "#PBS -q debug\n"
        "#PBS -A proj\n"
        "#PBS -j oe\n"
        "#PBS -o /scratch/logs/ens-1.out\n"
        "#PBS -l filesystems=home:eagle\n"
        "\n"
        'cd "$PBS_O_WORKDIR"\n'
        "module load cuda\n"
        "END=$(( $(date +%s) + 5400 ))\n"
        "HOSTS=$(awk '!seen[$0]++' \"$PBS_NODEFILE\" | paste -sd, -)\n"
        'exec mpiexec -n 4 --ppn 1 --hosts "$HOSTS" env -u PMI_FD -u PMI_PORT -u HYDI_CONTROL_FD '
        f"{WORKER_ARGS} --alloc-env PBS_JOBID --workdir balsam_workdirs "
        "--results-dir balsam_results --index-env PMI_RANK --host-env PMI_HOSTNAME\n"
    )


def test_pbs_job_script_minimal_and_named_launcher() -> None:
    spec = EnsembleJobSpec(name="j", scheduler="tcp://h:1", nodes=1, walltime=90, cores_per_node=8, launcher="pals")
    text = pbs.job_script(spec)
    assert "#PBS -l select=1:ncpus=8:mpiprocs=1\n" in text and "#PBS -l walltime=00:01:30\n" in text
    assert "#PBS -q" not in text and "#PBS -A" not in text and "#PBS -o" not in text and "ngpus" not in text
    assert text.endswith("--host-env PMI_HOSTNAME --launcher pals\n")


def test_lsf_job_script_text() -> None:
    spec = EnsembleJobSpec(**{**SPEC, "walltime": 5401}, job_extra_directives=('-alloc_flags "smt4"',))  # type: ignore[arg-type]
    assert lsf.job_script(spec) == (
        "#!/usr/bin/env bash\n"
        "#BSUB -J ens-1\n"
        "#BSUB -n 4\n"
        '#BSUB -R "span[ptile=1]"\n'
        "#BSUB -x\n"
        "#BSUB -W 01:31\n"
        "#BSUB -q debug\n"
        "#BSUB -P proj\n"
        '#BSUB -gpu "num=4"\n'
        "#BSUB -o /scratch/logs/ens-1-%J.out\n"
        "#BSUB -e /scratch/logs/ens-1-%J.err\n"
        '#BSUB -alloc_flags "smt4"\n'
        "\n"
        "module load cuda\n"
        "END=$(( $(date +%s) + 5401 ))\n"
        "i=0\n"
        "for host in $(echo $LSB_MCPU_HOSTS | awk '{for (k = 1; k < NF; k += 2) print $k}'); do\n"
        '  blaunch "$host" env BALSAM_DASK_NODE_INDEX="$i" BALSAM_DASK_NODE_HOST="$host" LSB_JOBID="$LSB_JOBID" '
        f"{WORKER_ARGS} --alloc-env LSB_JOBID --workdir balsam_workdirs --results-dir balsam_results "
        "--index-env BALSAM_DASK_NODE_INDEX --host-env BALSAM_DASK_NODE_HOST &\n"
        "  i=$((i + 1))\n"
        "done\n"
        "wait\n"
    )


@pytest.mark.parametrize(
    ("seconds", "expected"), [(60, "00:01"), (61, "00:02"), (5400, "01:30"), (90000, "25:00"), (0.5, "00:01")]
)
def test_lsf_walltime_is_minutes_rounded_up(seconds: float, expected: str) -> None:
    assert lsf.walltime_hhmm(seconds) == expected


# ----------------------------------------------------------------------------- parsers
@pytest.mark.parametrize(
    ("out", "job_id"),
    [
        ("1234.pbs01\n", "1234.pbs01"),
        ("123456.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n", "123456.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"),
        ("Welcome to the 2 cluster.\n77.srv\n", "77.srv"),  # a site banner before the id
        ("4321[].pbs01\n", "4321[].pbs01"),
        ("qsub: Unknown queue\n", None),
    ],
)
def test_pbs_job_id(out: str, job_id: str | None) -> None:
    assert pbs.parse_job_id(out) == job_id


# The text form of `qstat -x -f` (PBS Professional 2022): "Job Id:" blocks of indented
# "name = value" lines, long values continued on tab-indented lines.
QSTAT_F = """\
Job Id: 101.pbs01
    Job_Name = pbs-1-1
    Job_Owner = alice@login01
    resources_used.walltime = 00:12:01
    job_state = R
    queue = workq
    exec_host = n001/0*64+n002/0*64
    Variable_List = PBS_O_HOME=/home/alice,PBS_O_LANG=C.UTF-8,PBS_O_PATH=/usr/bin:/bin,
\tPBS_O_WORKDIR=/home/alice/run,PBS_O_QUEUE=workq, job_state = X
    comment = Job run at Mon Mar 04 at 10:01 on (n001:ncpus=64)+(n002:ncpus=64)

Job Id: 102.pbs01
    Job_Name = pbs-1-2
    job_state = Q
    queue = workq

Job Id: 103.pbs01
    job_state = F
    queue = workq
    Exit_status = 0

Job Id: 104.pbs01
    job_state = F
    Exit_status = -29
    comment = Job run at Mon Mar 04 at 09:00 and terminated

Job Id: 105.pbs01
    job_state = F
    Exit_status = 271

Job Id: 106.pbs01
    job_state = H

Job Id: 107.pbs01
    job_state = E
"""


def test_pbs_status_parsing() -> None:
    states = pbs.parse_status(QSTAT_F)
    assert {k: v for k, v in states.items() if "." in k} == {
        "101.pbs01": "RUNNING", "102.pbs01": "QUEUED", "103.pbs01": "FINISHED", "104.pbs01": "TIMEOUT",
        "105.pbs01": "FAILED", "106.pbs01": "QUEUED", "107.pbs01": "RUNNING",
    }  # fmt: skip
    assert states["101"] == "RUNNING"  # a short id finds the job too (qsub and qstat may qualify the server apart)
    assert pbs.parse_status("") == {}
    assert pbs.parse_status("qstat: Unknown Job Id 9.pbs01\n") == {}
    assert pbs.status_command(["1.a", "2.a"]) == ["qstat", "-x", "-f", "1.a", "2.a"]


@pytest.mark.parametrize(
    ("out", "job_id"),
    [
        ("Job <1234> is submitted to queue <normal>.\n", "1234"),
        ("Job <98> is submitted to default queue <batch>.\n", "98"),
        ("Warning: project not set, using default\nJob <7> is submitted to queue <debug>.\n", "7"),
        ("Request aborted by esub. Job not submitted.\n", None),
    ],
)
def test_lsf_job_id(out: str, job_id: str | None) -> None:
    assert lsf.parse_job_id(out) == job_id


def test_lsf_status_parsing() -> None:
    # `bjobs -noheader -o "jobid stat" 11 12 13 14 15 16 99`; "not found" is on stderr, shown here in case it is merged
    out = "11 RUN\n12 PEND\n13 DONE\n14 EXIT\n15 USUSP\n16 PSUSP\nJob <99> is not found\n"
    assert lsf.parse_status(out) == {
        "11": "RUNNING", "12": "QUEUED", "13": "FINISHED", "14": "FAILED", "15": "RUNNING", "16": "QUEUED",
    }  # fmt: skip
    assert lsf.status_command(["11", "12"]) == ["bjobs", "-noheader", "-o", "jobid stat", "11", "12"]


def test_release_commands_text() -> None:
    """Each batch system's own way of giving back some nodes of a running job."""
    assert slurm.release_command("42", ["n2", "n4"], ["n1", "n3"]) == ["scontrol", "update", "JobId=42",
                                                                       "NodeList=n1,n3"]  # fmt: skip
    assert pbs.release_command("7.pbs01", ["x2", "x3"], ["x1"]) == ["pbs_release_nodes", "-j", "7.pbs01", "x2", "x3"]
    assert lsf.release_command("9", ["h2", "h3"], ["h1"]) == ["bresize", "release", "h2 h3", "9"]


def _started(job_id: str, system: str) -> dict[str, Any] | None:
    rec = fakebatch.find(job_id, system)
    return rec if rec and rec.get("job_pid") else None


def test_fake_release_commands_refuse_what_the_real_ones_refuse(
    fake_batch: Callable[[str], Path], tmp_path: Path
) -> None:
    for system, script in (
        (
            "pbs",
            f"#!/bin/bash\n#PBS -l select=2:ncpus=1\n#PBS -l walltime=00:01:00\n#PBS -j oe\n"
            f"#PBS -o {tmp_path}/pbs.out\nsleep 60\n",
        ),
        ("lsf", '#!/bin/bash\n#BSUB -n 2\n#BSUB -R "span[ptile=1]"\n#BSUB -W 1\n#BSUB -app resizable\nsleep 60\n'),
    ):
        fake_batch(system)
        path = tmp_path / f"{system}.sh"
        path.write_text(script)
        if system == "pbs":
            job_id = pbs.parse_job_id(_run(["qsub", str(path)]).stdout)
        else:
            job_id = lsf.parse_job_id(_run(["bsub"], stdin=script).stdout)
        assert job_id
        rec = _wait(partial(_started, job_id, system), 5, "the job to start")
        first, second = rec["hosts"]
        mod = pbs if system == "pbs" else lsf
        primary = _run(mod.release_command(job_id, [first], [second]))
        assert primary.returncode != 0 and f"cannot release the primary execution host {first}" in primary.stderr
        stranger = _run(mod.release_command(job_id, ["elsewhere"], [first]))
        assert stranger.returncode != 0 and "elsewhere not part of job" in stranger.stderr
        ok = _run(mod.release_command(job_id, [second], [first]))
        assert ok.returncode == 0, ok.stderr
        rec = fakebatch.find(job_id, system)
        assert rec is not None and rec["hosts"] == [first] and rec["released"] == [second]
        _run(["qdel" if system == "pbs" else "bkill", job_id])


# ----------------------------------------------------------------------------- the fakes
@pytest.fixture
def fake_batch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Put a fake batch system first on PATH (with the venv's mpiexec); every process of
    every job it ran is stopped afterwards, by pid."""
    state = tmp_path / "batch"
    monkeypatch.setenv(fakebatch.STATE_ENV, str(state))
    monkeypatch.setenv("BALSAM_FAKE_PYTHON", sys.executable)
    monkeypatch.setenv(fakebatch.KILL_DELAY_ENV, "1")

    def use(system: str) -> Path:
        path = os.pathsep.join([str(FAKES / system), os.path.dirname(sys.executable), os.environ["PATH"]])
        monkeypatch.setenv("PATH", path)
        return state

    try:
        yield use
    finally:
        if state.exists():
            fakebatch.kill_all(state)


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_fake_pbs_enforces_walltime(fake_batch: Callable[[str], Path], tmp_path: Path) -> None:
    fake_batch("pbs")
    script = tmp_path / "sleep.sh"
    script.write_text(
        f"#!/bin/bash\n#PBS -N nap\n#PBS -l select=2:ncpus=1\n#PBS -l walltime=00:00:02\n#PBS -j oe\n"
        f"#PBS -o {tmp_path}/nap.out\necho started in $PWD\nsleep 60\n"
    )
    job_id = pbs.parse_job_id(_run(["qsub", str(script)]).stdout)
    assert job_id
    rec = _wait(lambda: (r := fakebatch.find(job_id, "pbs")) and r.get("job_pid") and r, 5, "the job to start")
    assert pbs.parse_status(_run(pbs.status_command([job_id])).stdout)[job_id] == "RUNNING"
    assert (tmp_path / "batch" / f"{rec['seq']}.nodes").read_text().split() == fakebatch.local_hosts()[:2]
    _wait(lambda: not fakebatch.alive(rec["job_pid"]), 10, "the walltime kill")
    _wait(lambda: pbs.parse_status(_run(pbs.status_command([job_id])).stdout).get(job_id) == "TIMEOUT", 5, "TIMEOUT")
    assert (tmp_path / "nap.out").read_text() == f"started in {os.environ['HOME']}\n"  # PBS starts jobs at home
    done = _run(["qdel", job_id])
    assert done.returncode != 0 and "finished" in done.stderr
    unknown = _run(["qstat", "-x", "-f", "999.nowhere"])
    assert unknown.returncode == 153 and "Unknown Job Id 999.nowhere" in unknown.stderr


def test_fake_lsf_reads_stdin_and_enforces_walltime(fake_batch: Callable[[str], Path], tmp_path: Path) -> None:
    fake_batch("lsf")
    script = '#!/bin/bash\n#BSUB -J nap\n#BSUB -n 2\n#BSUB -R "span[ptile=1]"\n#BSUB -W 1\nsleep 600\n'
    (tmp_path / "nap.sh").write_text(script)
    as_file = _run(["bsub", str(tmp_path / "nap.sh")])
    assert as_file.returncode != 0 and "standard input" in as_file.stderr
    quick = lsf.parse_job_id(_run(["bsub"], stdin=script.replace("sleep 600", "sleep 0.2")).stdout)
    # the fake takes fractional minutes: a 3 s run limit
    slow = lsf.parse_job_id(_run(["bsub", "-W", "0.05"], stdin=script).stdout)
    assert quick and slow
    rec = _wait(lambda: (r := fakebatch.find(slow, "lsf")) and r.get("job_pid") and r, 5, "the job to start")
    assert rec["hosts"] == fakebatch.local_hosts()[:2]
    _wait(lambda: not fakebatch.alive(rec["job_pid"]), 10, "the run limit kill")
    states = _wait(lambda: (s := lsf.parse_status(_run(lsf.status_command([quick, slow])).stdout)).get(slow) and s,
                   5, "the status of both jobs")  # fmt: skip
    assert states == {quick: "FINISHED", slow: "FAILED"}
    listing = _run(["bjobs", "-noheader", "-o", "jobid stat exit_reason", quick, slow, "404"])
    assert (
        listing.stdout == f"{quick} DONE -\n{slow} EXIT TERM_RUNLIMIT\n" and "Job <404> is not found" in listing.stderr
    )
    assert listing.returncode == 255


# ----------------------------------------------------------------------------- end to end
def where() -> tuple[str, str | None, str, int]:
    """The node-worker's name, host and allocation, and the size of an MPI world started
    in the task itself (1: a singleton, not a rank of the worker's own launch)."""
    from mpi4py import MPI

    config = NodeConfig.from_env(os.environ[ENV_VAR])
    return config.name, config.host, config.alloc_id, MPI.COMM_WORLD.Get_size()


@pytest.mark.mpi
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("system", "resizable"), [("pbs", True), ("lsf", True), ("lsf", False)],
                         ids=["pbs", "lsf", "lsf-not-resizable"])  # fmt: skip
def test_ensemble_job_end_to_end(system: str, resizable: bool, fake_batch: Callable[[str], Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from balsam_dask.deploy.clusters import LSFEnsembleCluster, PBSEnsembleCluster

    state = fake_batch(system)
    # queued for 3 s: long enough for the checks of the QUEUED state below on a loaded machine
    monkeypatch.setenv(fakebatch.QUEUE_DELAY_ENV, "3")
    cls = PBSEnsembleCluster if system == "pbs" else LSFEnsembleCluster
    hosts = set(fakebatch.local_hosts()[:2])
    extra = ["-app resizable"] if system == "lsf" and resizable else []
    with cls(cores_per_node=2, walltime="00:05:00", log_directory=str(tmp_path), workdir=str(tmp_path),
             poll_interval=0.3, job_extra_directives=extra) as cluster, Client(cluster) as client:  # fmt: skip
        store = Store(cluster.store_url)
        try:
            name = cluster.request(2)
            job_id = cluster.jobs[name]["job_id"]
            assert cluster.jobs[name]["state"] == "QUEUED" and job_id
            rec = fakebatch.find(job_id, system, state)
            assert rec is not None and rec["name"] == name and rec["nodes"] == 2
            client.flush()
            (alloc,) = store.allocations()
            assert (alloc.system, alloc.scheduler_id, alloc.nodes, alloc.state) == (system, job_id, 2, "QUEUED")

            client.wait_for_workers(2, timeout=40)
            names = {w["name"] for w in client.scheduler_info()["workers"].values()}
            assert names == {f"{name}-0", f"{name}-1"}
            worker, host, alloc_id, world = client.submit(where, cores=1).result(timeout=30)
            assert worker in names and host in hosts and alloc_id == job_id and world == 1

            r = client.submit_mpi([sys.executable, "-c", RANKS], nodes=2, ranks_per_node=1).result(timeout=60)
            ranks = [(r.workdir / f"rank-{i}.txt").read_text().split() for i in range(2)]
            assert {x[1] for x in ranks} == hosts and {x[2] for x in ranks} == {"3"}
            assert r.command[0].endswith("mpiexec")

            _wait(lambda: cluster.jobs[name]["state"] == "RUNNING", 10, "the job to be RUNNING")
            client.flush()
            (alloc,) = store.allocations()
            assert alloc.state == "RUNNING" and alloc.started_at is not None and alloc.scheduler_id == job_id

            # an idle node given back through the batch system's own command; never the first
            first, second = fakebatch.local_hosts()[:2]
            assert cluster.release_nodes(name, [f"{name}-0"]) == []
            _wait(lambda: cluster.releasable_nodes().get(name) == [f"{name}-1"], 10, "node 1 to be idle")
            assert cluster.release_nodes(name, [f"{name}-1"]) == [f"{name}-1"]
            _wait(lambda: len(client.scheduler_info()["workers"]) == 1, 10, "node 1's worker to leave")
            rec = fakebatch.find(job_id, system, state)
            assert rec is not None and rec["state"] in ("R", "RUN") and fakebatch.alive(rec["job_pid"])
            if resizable:
                assert rec["hosts"] == [first] and rec["released"] == [second]
            else:  # LSF would not shrink the job: the node stays charged, and the store says why
                assert rec["hosts"] == [first, second] and "released" not in rec
            assert client.submit(where, cores=1).result(timeout=30)[0] == f"{name}-0"  # the job goes on
            assert cluster.jobs[name]["nodes"] == 1
            client.flush()
            (alloc,) = store.allocations()
            assert [r["host"] for r in alloc.info["released"]] == [second] and "released 1 idle node" in alloc.message
            if not resizable:
                assert "the batch system refused to shrink the job: bresize release" in alloc.message
                assert "The job is not resizable" in alloc.message

            rec = fakebatch.find(job_id, system, state)
            assert rec is not None
            job_pids = fakebatch.descendants(rec["sup_pid"])
            worker_pids = set(client.run(os.getpid).values())
            assert worker_pids <= set(job_pids) and rec["job_pid"] in job_pids
            cluster.cancel(name)
            _wait(lambda: not any(fakebatch.alive(p) for p in job_pids), 20, "the job's processes to end")
            client.flush()
            (alloc,) = store.allocations()
            assert alloc.state == "CANCELLED" and alloc.ended_at is not None
            rec = _wait(lambda: (r := fakebatch.find(job_id, system, state)) and r["state"] in fakebatch.FINAL and r,
                        10, "the fake to record the job's end")  # fmt: skip
            assert rec["deleted"] and rec["reason"] == ("deleted" if system == "pbs" else "TERM_OWNER")
        finally:
            store.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("system", ["pbs", "lsf"])
def test_failed_submission_is_recorded_and_backs_off(system: str, fake_batch: Callable[[str], Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from balsam_dask.deploy.clusters import LSFEnsembleCluster, PBSEnsembleCluster

    fake_batch(system)
    monkeypatch.setenv(fakebatch.FAIL_ENV, "Unknown queue nosuch")
    cls = PBSEnsembleCluster if system == "pbs" else LSFEnsembleCluster
    with (
        cls(cores_per_node=2, workdir=str(tmp_path), queue="nosuch", poll_interval=0.3) as cluster,
        Client(cluster) as client,
    ):
        name = cluster.request(1)
        assert cluster.jobs[name]["state"] == "SUBMIT_FAILED" and cluster.jobs[name]["job_id"] is None
        client.flush()
        store = Store(cluster.store_url)
        try:
            (alloc,) = store.allocations()
            assert alloc.state == "SUBMIT_FAILED" and alloc.ended_at is not None
            assert alloc.message and f"{'qsub' if system == 'pbs' else 'bsub'}: Unknown queue nosuch" in alloc.message
        finally:
            store.close()
        with pytest.raises(AllocationError, match="backing off"):
            cluster.request(1)
        assert not fakebatch.records()
