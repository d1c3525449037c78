"""Site configuration: every template parses, each bad key or value is one InvalidSiteConfig naming
the file, the key path and a correct form; load_site reads and resolves DIR/site.yaml; the site's
cluster runs tasks (a real LocalEnsembleCluster) or writes the site's batch directives; the
policy sizes allocations from an extra backlog the scheduler has not seen."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from balsam_dask import Client, Store
from balsam_dask.deploy.site import adapt_for_site, cluster_for_site, load_site
from balsam_dask.errors import InvalidSiteConfig, InvalidSpec
from balsam_dask.packing.policy import BacklogShape
from balsam_dask.taskdb.site import SCHEDULERS, parse_site, site_template

SLURM = {"scheduler": "slurm", "node": {"cores_per_node": 4}}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_template_parses_and_names_every_key(scheduler: str, tmp_path: Path) -> None:
    text = site_template(scheduler)
    data = yaml.safe_load(text)
    site = parse_site(data)
    assert site.scheduler == scheduler and site.store == "balsam.db"
    assert site.serve.idle_ttl == 300.0 and site.serve.lease == 60.0 and site.serve.persistent is False
    lines = text.splitlines()
    for section, keys in data.items():  # every key written with a comment saying what it is
        for key in keys if isinstance(keys, dict) else [section]:
            (line,) = [ln for ln in lines if ln.strip().startswith(f"{key}:")]
            assert " # " in line, line
    (tmp_path / "site.yaml").write_text(text)
    loaded = load_site(tmp_path)
    assert loaded.workdir == str(tmp_path) and loaded.store == str(tmp_path / "balsam.db")
    assert loaded.node.cores_per_node is not None and loaded.serve.max_in_flight == 4 * (loaded.total_cores or 0)


def test_site_template_refuses_an_unknown_scheduler() -> None:
    with pytest.raises(InvalidSpec, match=r"scheduler='sge' is invalid: give one of local, slurm, pbs, lsf"):
        site_template("sge")


def test_values_are_converted() -> None:
    site = parse_site({
        **SLURM, "store": "postgresql+psycopg://me@db:5432/balsam",
        "batch": {"partition": "gpu", "account": "proj", "job_prologue": ["module load cuda"]},
        "node": {"cores_per_node": 8, "gpus_per_node": 4, "memory_per_node": "2GiB", "launcher": "openmpi:/bin/mpirun",
                 "bind": "core"},
        "limits": {"max_walltime": "02:00:00", "min_walltime": "30m", "idle_timeout": 5, "max_total_nodes": 3},
        "serve": {"idle_ttl": "1m", "persistent": True},
        "tasks": {"tags": {"exp": "a", "n": 3}, "apps": ["sim"]},
    })  # fmt: skip
    assert site.node.memory_per_node == 2 * 1024**3 and site.node.launcher == "openmpi:/bin/mpirun"
    assert (site.limits.max_walltime, site.limits.min_walltime, site.limits.idle_timeout) == (7200.0, 1800.0, 5.0)
    assert site.serve.idle_ttl == 60.0 and site.serve.persistent and site.serve.max_in_flight == 4 * 8 * 3
    assert site.tasks.takes("sim", {"exp": "a", "n": "3", "x": "y"}) and not site.tasks.takes("sim", {"exp": "a"})
    assert not site.tasks.takes("post", {"exp": "a", "n": "3"})
    limits = site.site_limits()
    assert limits.node.cores == 8 and limits.max_total_nodes == 3 and limits.min_walltime == 1800.0


# (data, the message expected: key path, and the correct form)
BAD: list[tuple[Any, str]] = [
    ({**SLURM, "batch": {"queue": 5}}, r"^site.yaml: batch.queue=5 is invalid: give a queue name or null, e.g. "
                                       r"queue: debug$"),
    ({**SLURM, "batch": {"account": "my proj"}}, r"batch.account='my proj' is invalid: .* e.g. account: myproject"),
    ({**SLURM, "batch": {"job_prologue": "module load x"}}, r"batch.job_prologue='module load x' is invalid: give a "
                                                            r"list of shell lines, e.g. job_prologue: \['module"),
    ({**SLURM, "batch": {"queue": "q", "partition": "p"}}, r"batch.partition='p' is invalid: give one of batch.queue "
                                                           r"and batch.partition .* e.g. partition: null"),
    ({"scheduler": "pbs", "node": {"cores_per_node": 4}, "batch": {"partition": "p"}},
     r"batch.partition='p' is invalid: give null: partitions are Slurm's"),
    ({"scheduler": "local", "batch": {"queue": "debug"}}, r"batch.queue='debug' is invalid: give null with "
                                                          r"scheduler: local .* e.g. queue: null"),
    ({"scheduler": "slurm"}, r"node.cores_per_node=None is invalid: give the cores of one compute node .* "
                             r"e.g. cores_per_node: 64"),
    ({"scheduler": "sge"}, r"scheduler='sge' is invalid: give one of local, slurm, pbs, lsf, e.g. scheduler: local"),
    ({}, r"scheduler is missing: give one of local, slurm, pbs, lsf, e.g. scheduler: local"),
    ([1], r"the file holds list \[1\]: give a mapping of site keys, e.g. scheduler: local"),
    ({"scheduler": "local", "store": "mysql://h/db"}, r"store='mysql://h/db' is invalid: .* e.g. store: balsam.db"),
    ({"scheduler": "local", "store": "sqlite://"}, r"store='sqlite://' is invalid"),
    ({"scheduler": "local", "workdir": 7}, r"workdir=7 is invalid: give a directory .* e.g. workdir: /scratch"),
    ({"scheduler": "local", "node": {"cores_per_node": 0}}, r"node.cores_per_node=0 is invalid: give an integer "
                                                            r">= 1, e.g. cores_per_node: 64"),
    ({"scheduler": "local", "node": {"gpus_per_node": True}}, r"node.gpus_per_node=True is invalid"),
    ({"scheduler": "local", "node": {"memory_per_node": "lots"}}, r"node.memory_per_node='lots' is invalid: give "
                                                                  r"bytes or a size such as 64GB, or null"),
    ({"scheduler": "local", "node": {"launcher": "foompi"}}, r"node.launcher='foompi' is invalid: give an MPI "
                                                             r"launcher \(.*mpich.*\).* e.g. launcher: openmpi:"),
    ({"scheduler": "local", "node": {"bind": "socket"}}, r"node.bind='socket' is invalid: give core, none or null"),
    ({"scheduler": "local", "local": {"nodes": -1}}, r"local.nodes=-1 is invalid: give an integer >= 0, e.g. nodes: 2"),
    ({"scheduler": "local", "local": {"nodes": 4}, "limits": {"max_nodes_per_job": 2}},
     r"local.nodes=4 is invalid: give at most limits.max_nodes_per_job \(2\), e.g. nodes: 2"),
    ({"scheduler": "local", "limits": {"idle_timeout": "soon"}}, r"limits.idle_timeout='soon' is invalid: give a "
                                                                 r"duration, e.g. idle_timeout: 60"),
    ({"scheduler": "local", "limits": {"min_walltime": "2h", "max_walltime": "1h"}},
     r"limits.max_walltime='1h' is invalid: give a duration >= limits.min_walltime \(7200 s\)"),
    ({**SLURM, "limits": {"min_nodes": 4, "max_nodes_per_job": 2}}, r"limits.max_nodes_per_job=2 is invalid: give "
                                                                    r"an integer >= limits.min_nodes \(4\)"),
    ({"scheduler": "local", "limits": {"max_queued_jobs": 0}}, r"limits.max_queued_jobs=0 is invalid"),
    ({"scheduler": "local", "serve": {"lease": -5}}, r"serve.lease=-5 is invalid: give a duration, e.g. lease: 60"),
    ({"scheduler": "local", "serve": {"max_in_flight": "many"}}, r"serve.max_in_flight='many' is invalid"),
    ({"scheduler": "local", "serve": {"persistent": "yes"}}, r"serve.persistent='yes' is invalid: give true or false"),
    ({"scheduler": "local", "serve": 5}, r"serve=5 is invalid: give a mapping of serve keys, e.g. serve: \{idle_ttl"),
    ({"scheduler": "local", "tasks": {"tags": ["a"]}}, r"tasks.tags=\['a'\] is invalid: give a mapping of tag names "
                                                       r"to values, e.g. tags: \{experiment: sweep1\}"),
    ({"scheduler": "local", "tasks": {"apps": ["mod:fn"]}}, r"tasks.apps=\['mod:fn'\] is invalid: give a list of app "
                                                           r"names, e.g. apps: \[sim, post\]"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "match"), BAD)
def test_each_bad_key_or_value_is_one_clear_error(data: Any, match: str) -> None:
    with pytest.raises(InvalidSiteConfig, match=match if match.startswith("^") else "^site.yaml: " + match):
        parse_site(data)


@pytest.mark.parametrize(("data", "match"), [
    ({"scheduler": "local", "limits": {"idle_timout": 5}}, r"limits.idle_timout is not a site key: did you mean "
                                                           r"limits.idle_timeout\? e.g. idle_timeout: 60"),
    ({"schedular": "local"}, r"schedular is not a site key: did you mean scheduler\? e.g. scheduler: local"),
    ({"scheduler": "local", "limit": {}}, r"limit is not a site key: did you mean limits\? e.g. limits: \{min_nodes"),
    ({"scheduler": "slurm", "batch": {"cores_per_node": 4}}, r"batch.cores_per_node is not a site key: did you mean "
                                                             r"node.cores_per_node\? e.g. cores_per_node: 64"),
    ({"scheduler": "local", "zzz": 1}, r"zzz is not a site key: give one of scheduler, store, workdir, batch, node"),
])  # fmt: skip
def test_unknown_key_suggests_the_nearest(data: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidSiteConfig, match=f"^conf/site.yaml: {match}") as e:
        parse_site(data, "conf/site.yaml")
    assert e.value.where == "conf/site.yaml" and e.value.key == match.split(" ")[0].replace("\\", "")


def test_load_site_errors_name_the_file_and_the_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidSiteConfig, match=r"the site directory does not exist: create it with: balsam-dask "
                                                r"site init --scheduler local"):  # fmt: skip
        load_site(tmp_path / "nosuch")
    with pytest.raises(InvalidSiteConfig, match=r"site.yaml does not exist: create it with: balsam-dask site init"):
        load_site(tmp_path)
    f = tmp_path / "site.yaml"
    f.write_text("scheduler: local\nbatch:\n  queue: [debug\nnode:\n  cores_per_node: 2\n")
    with pytest.raises(InvalidSiteConfig, match=rf"^{f}: line 4, column \d+: YAML syntax error \(.*\): write "
                                                r"`key: value` lines, .* e.g. batch: \{queue: debug\}$"):  # fmt: skip
        load_site(tmp_path)
    f.write_text("scheduler: local\nnode:\n  cores_per_node: two\n")
    with pytest.raises(InvalidSiteConfig, match=rf"^{f}: node.cores_per_node='two' is invalid"):
        load_site(tmp_path)


def test_load_site_resolves_paths_against_the_site_dir(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("scheduler: local\nstore: db/tasks.db\nworkdir: ../work\nlocal: {nodes: 1}\n")
    site = load_site(tmp_path)
    assert site.store == str(tmp_path / "db" / "tasks.db") and site.workdir == str(tmp_path.parent / "work")
    assert site.node.cores_per_node == os.cpu_count()  # this machine's cores, one node
    (tmp_path / "site.yaml").write_text("scheduler: local\nstore: postgresql://u@h/db\nworkdir: /abs\n")
    site = load_site(tmp_path)
    assert site.store == "postgresql://u@h/db" and site.workdir == "/abs"


def double(x: int) -> int:
    return 2 * x


@pytest.mark.timeout(120)
def test_local_site_cluster_runs_a_task(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("scheduler: local\nnode: {cores_per_node: 1}\nlocal: {nodes: 1}\n"
                                        "limits: {max_nodes_per_job: 2}\n")  # fmt: skip
    site = load_site(tmp_path)
    with cluster_for_site(site, nodes=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        assert client.submit(double, 21, cores=1).result(timeout=60) == 42
        assert len(cluster.scheduler_info["workers"]) == 2
        client.flush()
    store = Store(site.store)  # the site's store, in the site's directory
    try:
        assert store.count(state="FINISHED") == 1
    finally:
        store.close()
    assert (tmp_path / "dask-scratch").is_dir()  # the workers' directories too


def test_slurm_site_job_script_has_the_site_directives(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({
        **SLURM, "batch": {"partition": "gpu", "account": "proj", "job_prologue": ["module load cuda", "cd /x"],
                           "job_extra_directives": ["--constraint=a100"], "python": "/opt/py/bin/python"},
        "node": {"cores_per_node": 16, "gpus_per_node": 4, "launcher": "srun"},
    }))  # fmt: skip
    site = load_site(tmp_path)
    with pytest.raises(InvalidSpec, match=r"nodes=2 is for local sites"):
        cluster_for_site(site, nodes=2)
    with cluster_for_site(site) as cluster:  # only the scheduler starts: no job until asked for
        script = cluster.job_script(nodes=2)  # type: ignore[attr-defined]
    lines = script.splitlines()
    for line in ("#SBATCH --nodes=2", "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --constraint=a100", "#SBATCH --time=00:30:00", "module load cuda", "cd /x"):  # fmt: skip
        assert line in lines, script
    assert lines.index("#SBATCH --constraint=a100") < lines.index("module load cuda")
    assert "/opt/py/bin/python -m balsam_dask.node_worker" in script and "--cores 16 --gpus 4" in script
    assert f"--workdir {tmp_path}/balsam_workdirs" in script


def worker_count(cluster: Any) -> int:
    return len(cluster.scheduler_info["workers"])


@pytest.mark.timeout(120)
def test_extra_backlog_makes_the_policy_request_an_allocation(tmp_path: Path) -> None:
    """Nothing submitted to the scheduler; an extra backlog of N waiting 1-node tasks (the
    store's, for serve) is enough for the policy to request an allocation."""
    (tmp_path / "site.yaml").write_text(
        "scheduler: local\nnode: {cores_per_node: 1}\nlocal: {nodes: 0}\n"
        "limits: {max_nodes_per_job: 2, max_total_nodes: 2, min_walltime: 60, "
        "default_task_walltime: 30, max_queued_jobs: 2}\n"
    )  # one job per decision
    site = load_site(tmp_path)
    waiting = [BacklogShape(nodes=1, cores=1, gpus=0, walltime=30.0, count=6)]
    with cluster_for_site(site) as cluster:
        adaptive = adapt_for_site(cluster, site, interval="0.2s")
        time.sleep(1.0)
        assert cluster.jobs == {} and adaptive.decide().requests == ()  # nothing to do
        adaptive = adapt_for_site(cluster, site, extra_backlog=lambda: waiting, interval="0.2s")
        assert adaptive.backlog() == waiting  # the placer's (empty) and the extra one
        deadline = time.time() + 60
        while worker_count(cluster) == 0:
            assert time.time() < deadline, f"no allocation was requested: {adaptive.decisions}"
            time.sleep(0.2)
        adaptive.stop()  # and let every allocation it asked for start before closing
        while any(j["state"] == "PENDING" for j in cluster.jobs.values()):
            assert time.time() < deadline, cluster.jobs
            time.sleep(0.2)
        ((_, decision), *_) = adaptive.decisions
        assert len(decision.requests) == 1 and 1 <= decision.requests[0].nodes <= 2
        assert decision.reason.startswith("backlog 6 task(s)"), decision.reason
        assert sum(j["nodes"] for j in cluster.jobs.values()) == decision.requests[0].nodes
