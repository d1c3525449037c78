"""Where a cluster listens and how its connections are secured.

Every cluster takes ``host=`` (the address its scheduler, and on ``LocalEnsembleCluster`` its
node-workers, listen on) and ``security=`` (TLS: a :class:`distributed.Security`, or ``True``
for temporary certificates as :class:`distributed.LocalCluster` makes them). Node-workers that a
batch job starts read their certificates from files: :func:`write_worker_tls_files` writes the
in-memory ones, readable by their owner only, where the job's nodes find them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any

from distributed.security import Security

from balsam_dask.errors import InvalidSpec

#: Where LocalEnsembleCluster listens unless told otherwise (as distributed.LocalCluster does).
LOOPBACK = "127.0.0.1"
#: ``dask worker`` options that choose the address a worker listens on.
WORKER_LISTEN_OPTIONS = ("--host", "--interface", "--listen-address")
_SECURITY_FORM = (
    "use security=True (TLS with temporary certificates) or a distributed.Security, e.g. "
    "security=Security(tls_ca_file='ca.pem', tls_scheduler_cert='s.pem', tls_worker_cert='w.pem', "
    "tls_client_cert='c.pem', require_encryption=True)"
)


def check_host(name: str, value: Any, example: str = "'0.0.0.0'") -> str | None:
    """``value`` if it is a host name or address to listen on (None: the caller's default)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "://" in value or any(c.isspace() for c in value):
        raise InvalidSpec(
            f"{name}={value!r} is invalid: give a host name or address to listen on, e.g. {name}={example}"
        )
    return value


def check_security(value: Any) -> Security | None:
    """The :class:`~distributed.Security` that ``security=`` asks for; None for plain TCP."""
    if value is None or value is False:
        return None
    if value is True:
        try:
            return Security.temporary()
        except ImportError as e:
            raise ImportError(
                "security=True makes temporary certificates with the 'cryptography' package: install it "
                "(pip install cryptography), or pass a distributed.Security naming certificate files"
            ) from e
    if isinstance(value, Security):
        if not (
            value.require_encryption or any(getattr(value, a, None) for a in ("tls_ca_file", "tls_scheduler_cert"))
        ):
            return None  # Security() configures nothing: plain TCP, as Dask reads it
        return value
    raise InvalidSpec(f"security={value!r} is invalid: {_SECURITY_FORM}")


def protocol(security: Security | None) -> str:
    return "tls://" if security is not None else "tcp://"


def dashboard_address(value: Any, host: str) -> list[tuple[str, int]] | None:
    """``dashboard_address`` as LocalCluster takes it (``':8787'``, ``8787``, ``'host:port'``,
    several separated by commas), except that an address without a host listens on ``host``
    rather than on every interface."""
    from distributed.utils import clean_dashboard_address

    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(value)
        entries = clean_dashboard_address(value)
    except ValueError:
        raise InvalidSpec(
            f"dashboard_address={value!r} is invalid: give a port or host:port, e.g. dashboard_address=':8787' "
            "(on the cluster's host) or dashboard_address='0.0.0.0:8787' (every interface)"
        ) from None
    return [(str(e["address"]) or host, int(e["port"])) for e in entries]


def routable_ip(address: str) -> str:
    """This machine's IP on the route to ``address`` (a Dask address such as a scheduler's):
    where a node-worker listens by default, the address Dask tells the other processes anyway."""
    from distributed.comm.addressing import get_address_host
    from distributed.utils import get_ip

    return str(get_ip(get_address_host(address)))


def write_private(directory: str, name: str, text: str) -> str:
    """Write ``text`` to a new file ``directory/name`` that only its owner can read (0600; the
    directory is made 0700 when missing); returns the path."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def write_worker_tls_files(security: Security, directory: str) -> tuple[list[str], list[str]]:
    """``dask worker`` options that give a node-worker started by a batch job its TLS
    certificates (``--tls-ca-file``, ``--tls-cert``, ``--tls-key``), and the files written
    for them: certificates held in memory (``Security.temporary()``) go to new files in
    ``directory`` (0600), which the job's nodes must see; certificate files are passed as they
    are. The caller removes the files written (:func:`remove_files`)."""
    config = security.get_tls_config_for_role("worker")
    prefix = f"worker-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    args: list[str] = []
    written: list[str] = []
    for key, option in (("ca_file", "--tls-ca-file"), ("cert", "--tls-cert"), ("key", "--tls-key")):
        value = config.get(key)
        if not value:
            continue
        if "\n" in value:  # a PEM text, not a file name
            value = write_private(directory, f"{prefix}.{key.replace('_file', '')}.pem", value)
            written.append(value)
        args += [option, value]
    return args, written


def remove_files(paths: list[str]) -> None:
    """Remove the files (gone already is fine), then their directories if left empty."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    for directory in {os.path.dirname(p) for p in paths}:
        with contextlib.suppress(OSError):
            os.rmdir(directory)
