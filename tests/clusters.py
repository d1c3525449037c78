"""Real Dask clusters for tests: LocalEnsembleCluster on a real store (the fixtures `ens` and
`module_dir` are registered by tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import pytest

from balsam_dask import Client, LocalEnsembleCluster, Store


@contextmanager
def ensemble(store_url: str, workdir: Path, **kwargs: Any) -> Iterator[tuple[LocalEnsembleCluster, Client]]:
    kwargs.setdefault("nodes", 2)
    kwargs.setdefault("cores_per_node", 4)
    with dask.config.set({"distributed.scheduler.validate": True}):
        with LocalEnsembleCluster(store=store_url, workdir=workdir, validate=True, **kwargs) as cluster:
            with Client(cluster) as client:
                yield cluster, client
                status = client.balsam_status()
                assert not status["errors"], status["errors"]
                assert not status["anomalies"], status["anomalies"]
                assert status["writer"]["rejected"] == 0


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ens")


@pytest.fixture(scope="module")
def ens(module_dir: Path) -> Iterator[tuple[LocalEnsembleCluster, Client]]:
    """A shared 2-node x 4-core cluster on a SQLite store, for tests that do not break it."""
    cwd = os.getcwd()
    os.chdir(module_dir)
    try:
        with ensemble(f"sqlite:///{module_dir}/balsam.db", module_dir) as pair:
            yield pair
    finally:
        os.chdir(cwd)


def store_of(cluster: LocalEnsembleCluster) -> Store:
    return Store(cluster.store_url)


def history_by_key(store: Store, key: str) -> list[tuple[str | None, str]]:
    (t,) = store.tasks(key=key)
    return [(e.from_state, e.to_state) for e in store.history(t.id)]
