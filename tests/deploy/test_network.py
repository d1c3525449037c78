"""Where clusters listen and TLS: the real listening sockets of the scheduler, its HTTP server,
the nannies and the worker processes (psutil), real TLS connections and a refused plain one."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import distributed
import psutil
import pytest
from distributed.security import Security
from distributed.utils import get_ip

from balsam_dask import Client, LocalEnsembleCluster
from balsam_dask.deploy.clusters import LSFEnsembleCluster, PBSEnsembleCluster, SlurmEnsembleCluster
from balsam_dask.errors import InvalidSpec
from balsam_dask.worker.node_worker import build_command, parse_args

LOOPBACK = {"127.0.0.1", "::1"}
EVERYWHERE = {"0.0.0.0", "::"}
BATCH = {"slurm": SlurmEnsembleCluster, "pbs": PBSEnsembleCluster, "lsf": LSFEnsembleCluster}


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of process ``pid``."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def add(x: int) -> int:
    return x + 1


def nested(x: int) -> int:
    """A task that submits a task through its worker's client (over the worker's TLS)."""
    client = distributed.get_client()
    future = client.submit(add, x, cores=1)
    distributed.secede()
    out = int(future.result())
    distributed.rejoin()
    return out


@pytest.mark.parametrize(("host", "expected"), [(None, LOOPBACK), ("0.0.0.0", EVERYWHERE)], ids=["default", "open"])
def test_local_cluster_listens_on_loopback_unless_asked(tmp_path: Path, host: str | None, expected: set[str]) -> None:
    before = listening(os.getpid())
    options = {} if host is None else {"host": host}
    with LocalEnsembleCluster(nodes=2, cores_per_node=1, workdir=tmp_path, store=f"sqlite:///{tmp_path}/b.db",
                              dashboard_address=":0", **options) as cluster, Client(cluster) as client:  # fmt: skip
        assert client.submit(add, 1, cores=1).result(timeout=30) == 2
        ours = listening(os.getpid()) - before  # the scheduler, its HTTP server, the nannies
        pids = set(client.run(os.getpid).values())
        workers = {(pid, a) for pid in pids for a in listening(pid)}  # worker processes: comm and HTTP
        scheduler = cluster.scheduler
        assert scheduler is not None
        nannies = [n.port for job in cluster.workers.values() for n in job.nannies]  # type: ignore[attr-defined]
        known = {port(scheduler.address), scheduler.http_server.port, *nannies}
        assert len(nannies) == 2 and known <= {p for _, p in ours}
        worker_ports = {port(a) for a in client.scheduler_info()["workers"]}
        assert len(pids) == 2 and worker_ports <= {p for _, (_, p) in workers}
        assert len(workers) >= 4  # each worker process: its comm port and its HTTP server
        addresses = {a for a, _ in ours} | {a for _, (a, _) in workers}
        assert addresses <= expected, f"listening on {addresses}, expected only {expected}"
        if host is None:
            assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")


def test_local_cluster_with_tls(tmp_path: Path) -> None:
    with LocalEnsembleCluster(nodes=2, cores_per_node=1, workdir=tmp_path, store=f"sqlite:///{tmp_path}/b.db",
                              security=Security.temporary()) as cluster, Client(cluster) as client:  # fmt: skip
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert all(a.startswith("tls://127.0.0.1:") for a in client.scheduler_info()["workers"])
        assert client.submit(add, 41, cores=1).result(timeout=30) == 42
        assert client.submit(nested, 1, cores=1).result(timeout=30) == 2
        app = client.submit_app([sys.executable, "-c", "print('over tls')"], cores=1).result(timeout=30)
        assert app.returncode == 0 and app.stdout_tail == "over tls"
        # a client without the certificates: the TLS listener drops its plain TCP connection
        start = time.monotonic()
        with pytest.raises(OSError):
            distributed.Client(f"tcp://127.0.0.1:{port(cluster.scheduler_address)}", timeout=3)
        assert time.monotonic() - start < 10
    with LocalEnsembleCluster(nodes=1, cores_per_node=1, workdir=tmp_path, store=f"sqlite:///{tmp_path}/b.db",
                              security=True) as cluster, Client(cluster) as client:  # fmt: skip
        assert cluster.scheduler_address.startswith("tls://")
        assert client.submit(add, 1, cores=1).result(timeout=30) == 2


@pytest.mark.parametrize("cls", [LocalEnsembleCluster, SlurmEnsembleCluster], ids=["local", "slurm"])
def test_bad_network_options(tmp_path: Path, cls: type) -> None:
    base: dict[str, object] = {"workdir": str(tmp_path)}
    if cls is not LocalEnsembleCluster:
        base["cores_per_node"] = 2
    with pytest.raises(InvalidSpec, match=r"security='yes' is invalid: use security=True .*distributed.Security"):
        cls(**base, security="yes")
    with pytest.raises(InvalidSpec, match=r"host=5 is invalid: .* e.g. host='0.0.0.0'"):
        cls(**base, host=5)
    with pytest.raises(InvalidSpec, match=r"host='tcp://1.2.3.4' is invalid"):
        cls(**base, host="tcp://1.2.3.4")
    if cls is LocalEnsembleCluster:
        with pytest.raises(InvalidSpec, match=r"dashboard_address='a:b:c' is invalid: .*':8787'"):
            cls(**base, dashboard_address="a:b:c")
    else:
        with pytest.raises(InvalidSpec, match=r"host='1.2.3.4' and interface='ib0': give one of them"):
            cls(**base, host="1.2.3.4", interface="ib0")
    assert not (tmp_path / ".balsam_tls").exists()


@pytest.mark.parametrize("system", ["slurm", "pbs", "lsf"])
def test_batch_cluster_listens_on_one_address_and_gives_workers_tls_files(tmp_path: Path, system: str) -> None:
    before = listening(os.getpid())
    with BATCH[system](cores_per_node=2, workdir=str(tmp_path), security=True) as cluster:
        ip = get_ip()
        assert cluster.scheduler_address.startswith(f"tls://{ip}:")
        ours = listening(os.getpid()) - before
        assert port(cluster.scheduler_address) in {p for _, p in ours}
        assert {a for a, _ in ours} == {ip}  # not every interface
        d = tmp_path / ".balsam_tls"
        files = {p.name.rsplit(".", 2)[1]: p for p in d.iterdir()}
        assert sorted(files) == ["ca", "cert", "key"]
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values())
        sec = cluster.security
        assert files["key"].read_text() == sec.tls_worker_key and files["cert"].read_text() == sec.tls_worker_cert
        assert files["ca"].read_text() == sec.tls_ca_file
        script = cluster.job_script(2)
        assert f"balsam_dask.node_worker {cluster.scheduler_address} " in script
        assert (f" -- --tls-ca-file {files['ca']} --tls-cert {files['cert']} --tls-key {files['key']}"
                in script.replace("'", ""))  # fmt: skip
    assert not any(p.exists() for p in files.values())  # removed when the cluster closed


def test_batch_cluster_interface_and_host(tmp_path: Path) -> None:
    with SlurmEnsembleCluster(cores_per_node=2, workdir=str(tmp_path), interface="lo") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert cluster.job_script(1).rstrip().endswith(" -- --interface lo")
        assert not (tmp_path / ".balsam_tls").exists()
    with SlurmEnsembleCluster(cores_per_node=2, workdir=str(tmp_path), host="127.0.0.1") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert " -- " not in cluster.job_script(1)


def test_node_worker_listens_on_its_route_to_the_scheduler() -> None:
    common = ["--name-prefix", "j", "--cores", "2"]
    cmd, _ = build_command(parse_args(["tls://127.0.0.1:8786", *common, "--", "--tls-key", "/k.pem"]), time.time())
    assert cmd[-6:] == ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--tls-key", "/k.pem"]
    cmd, _ = build_command(parse_args([f"tcp://{get_ip()}:8786", *common]), time.time())
    assert cmd[-4:] == ["--host", get_ip(), "--dashboard-address", f"{get_ip()}:0"]
    for chosen, http in ((["--interface", "lo"], ["--dashboard-address", "127.0.0.1:0"]),
                         (["--host=10.1.1.1"], ["--dashboard-address", "10.1.1.1:0"]),
                         (["--listen-address", "tcp://0.0.0.0:0"], []),
                         (["--host", "10.1.1.1", "--dashboard-address", ":8788"], [])):  # fmt: skip
        cmd, _ = build_command(parse_args(["tcp://127.0.0.1:8786", *common, "--", *chosen]), time.time())
        assert "--host" not in cmd[: -len(chosen)] and cmd[-len(chosen) - len(http) :] == http + chosen


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_slurm_ensemble_over_tls(tmp_path: Path) -> None:
    """Node-workers started by a real Slurm job read the certificate files, join over TLS, run
    tasks, and listen (worker and nanny) only on their address on the route to the scheduler."""
    from tests.deploy.test_slurm import slurm_available

    slurm_available()
    cluster = SlurmEnsembleCluster(cores_per_node=2, walltime="00:05:00", workdir=str(tmp_path), security=True,
                                   log_directory=str(tmp_path), poll_interval=1.0)  # fmt: skip
    with cluster, Client(cluster) as client:
        ip = get_ip()
        assert cluster.scheduler_address.startswith(f"tls://{ip}:")
        cluster.request(2)
        client.wait_for_workers(2, timeout=120)
        assert all(a.startswith(f"tls://{ip}:") for a in client.scheduler_info()["workers"])
        assert client.submit(add, 1, cores=2).result(timeout=60) == 2
        assert client.submit(nested, 2, cores=1).result(timeout=60) == 3  # the worker's client: TLS too
        app = client.submit_app([sys.executable, "-c", "print('over tls')"], cores=1).result(timeout=60)
        assert app.returncode == 0 and app.stdout_tail == "over tls"
        pids = set(client.run(os.getpid).values())
        nannies = {psutil.Process(p).parent().pid for p in pids}  # type: ignore[union-attr]
        sockets = {a for p in pids | nannies for a in listening(p)}
        assert len(pids) == len(nannies) == 2 and len(sockets) >= 6  # worker comm + HTTP, nanny comm
        assert {a for a, _ in sockets} == {ip}
        with pytest.raises(OSError):
            distributed.Client(f"tcp://{ip}:{port(cluster.scheduler_address)}", timeout=3)
    assert not (tmp_path / ".balsam_tls").exists()  # the certificate files went with the cluster
