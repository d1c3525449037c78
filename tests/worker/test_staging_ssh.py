"""Staging over ssh against a real sshd on loopback (started and stopped by pid here, with its
own host key, client key and configuration; nothing of the user's ~/.ssh is read or written):
``scp://`` and rsync's ``host:path``, by the transports alone and by a database task on a cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import dask
import distributed
import pytest

from balsam_dask import Client, LocalEnsembleCluster
from balsam_dask.errors import InvalidSpec
from balsam_dask.protocol import SPEC_ANNOTATION
from balsam_dask.spec import TaskSpec
from balsam_dask.taskdb.job import DbJob, DbResult
from balsam_dask.worker.dbtask import run_db_task
from balsam_dask.worker.staging import RsyncTransport, ScpTransport, register_transport
from tests.conftest import require_or_skip

SSHD = "/usr/sbin/sshd"


class Sshd(NamedTuple):
    port: int
    config: Path  # the client's ssh configuration: its key, its known hosts, host alias ``sshtest``


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None or shutil.which("scp") is None:
        require_or_skip("an OpenSSH server (apt-get install -y openssh-server)")
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )  # fmt: skip
    config = d / "ssh_config"
    config.write_text(
        f"Host sshtest\n  HostName 127.0.0.1\n  Port {port}\nHost *\n  IdentityFile {d}/client_key\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking accept-new\n"
        "  BatchMode yes\n  LogLevel ERROR\n"
    )  # fmt: skip
    if os.getuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:  # up once a command runs through it
            ok = subprocess.run(["ssh", "-F", str(config), "sshtest", "true"], capture_output=True, text=True,
                                timeout=20, stdin=subprocess.DEVNULL)  # fmt: skip
            if ok.returncode == 0:
                break
            assert proc.poll() is None and time.monotonic() < deadline, f"sshd: {ok.stderr}"
            time.sleep(0.1)
        yield Sshd(port, config)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_scp_fetches_and_pushes_files_and_directories(sshd: Sshd, tmp_path: Path) -> None:
    """``scp://host:port/path`` (a space in the name, quoted in the URL) both ways, a file and a
    directory, with the site's ssh configuration given as options."""
    remote = tmp_path / "remote dir"
    (remote / "inputs" / "sub").mkdir(parents=True)
    (remote / "inputs" / "a.txt").write_text("aaaa")
    (remote / "inputs" / "sub" / "b.txt").write_text("bb")
    t = ScpTransport(options=["-F", str(sshd.config)])
    base = f"scp://127.0.0.1:{sshd.port}{str(remote).replace(' ', '%20')}"
    work = tmp_path / "work"
    assert t.fetch(f"{base}/inputs", work / "in") == 6
    assert _tree(work / "in") == {"a.txt": "aaaa", "sub/b.txt": "bb"}
    assert t.fetch(f"{base}/inputs/a.txt", work / "a-copy.txt") == 4
    assert (work / "a-copy.txt").read_text() == "aaaa"
    (work / "out.dat").write_text("result")
    (remote / "results").mkdir()
    assert t.push(work / "out.dat", f"{base}/results/") == 6
    assert t.push(work / "in", f"{base}/results/") == 6
    assert _tree(remote / "results") == {"in/a.txt": "aaaa", "in/sub/b.txt": "bb", "out.dat": "result"}


def test_rsync_over_ssh_with_a_host_alias(sshd: Sshd, tmp_path: Path) -> None:
    """``host:path`` (rsync over ssh), the host an alias of the site's ssh configuration."""
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "data.txt").write_text("12345")
    t = RsyncTransport(options=["-e", f"ssh -F {sshd.config}"])
    assert t.fetch(f"sshtest:{remote}/data.txt", tmp_path / "w" / "data.txt") == 5
    (tmp_path / "w" / "back.txt").write_text("xyz")
    assert t.push(tmp_path / "w" / "back.txt", f"sshtest:{remote}/") == 3
    assert (remote / "back.txt").read_text() == "xyz"


def test_a_failing_scp_names_its_command_and_the_error(sshd: Sshd, tmp_path: Path) -> None:
    t = ScpTransport(options=["-F", str(sshd.config)])
    with pytest.raises(RuntimeError, match=r"scp -F .* exited with code 1: .*No such file"):
        t.fetch(f"scp://127.0.0.1:{sshd.port}{tmp_path}/missing.h5", tmp_path / "m.h5")


@pytest.mark.parametrize("options", ["-F cfg", ["-F", 3], 7])
def test_bad_transport_options_are_refused(options: object) -> None:
    with pytest.raises(InvalidSpec, match=r"options=.* is invalid: give a list of command-line arguments, e\.g\."):
        ScpTransport(options=options)  # type: ignore[arg-type]


def test_a_database_task_stages_in_and_out_over_scp(ens: tuple[LocalEnsembleCluster, Client], sshd: Sshd,
                                                    tmp_path: Path) -> None:  # fmt: skip
    """On a cluster: the workers' scp transport registered with the site's ssh configuration (as a
    worker preload would), a task fetches its input over scp and sends its output back."""
    _, client = ens
    remote = tmp_path / "remote"
    (remote / "results").mkdir(parents=True)
    (remote / "input.txt").write_text("hello over ssh")
    url = f"scp://127.0.0.1:{sshd.port}{remote}"
    client.run(register_transport, "scp", ScpTransport(options=["-F", str(sshd.config)]))
    try:
        job = DbJob(1040, "over-scp", stage_in=({"src": f"{url}/input.txt", "dest": "in.txt"},),
                    stage_out=({"src": "*.out", "dest": f"{url}/results/"},))  # fmt: skip
        spec = TaskSpec(kind="app", command="sh -c 'tr a-z A-Z < in.txt > shout.out'")
        with dask.annotate(**{SPEC_ANNOTATION: spec}):
            fut = distributed.Client.submit(client, run_db_task, job, key="over-scp-1040", pure=False)
        res = fut.result(timeout=120)
    finally:
        client.run(register_transport, "scp", ScpTransport())
    assert isinstance(res, DbResult)
    assert [(t.direction, t.transport, t.ok, t.nbytes) for t in res.transfers] == [
        ("in", "scp", True, 14), ("out", "scp", True, 14)]  # fmt: skip
    assert (remote / "results" / "shout.out").read_text() == "HELLO OVER SSH"
