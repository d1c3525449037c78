"""``cores=`` reaches a task's thread pools; ``current_task()`` works wherever a task runs."""

from __future__ import annotations

import os

import numpy  # noqa: F401 - loads the BLAS pool in the worker when this module is imported there
import pytest
import sklearn.ensemble  # noqa: F401 - loads an OpenMP runtime as well
from threadpoolctl import threadpool_info

from balsam_dask import Client, LocalEnsembleCluster, current_task
from balsam_dask.worker.threads import POOL_VARIABLES, pin_missing


def pool_sizes() -> dict[str, int]:
    return {i["user_api"]: i["num_threads"] for i in threadpool_info()}


@pytest.mark.slow
def test_cores_size_the_blas_and_openmp_pools_of_a_function_in_a_thread(
    ens: tuple[LocalEnsembleCluster, Client],
) -> None:
    _, client = ens
    assert client.submit(pool_sizes, cores=4, pure=False).result(timeout=60) == {"blas": 4, "openmp": 4}
    assert client.submit(pool_sizes, cores=1, pure=False).result(timeout=60) == {"blas": 1, "openmp": 1}
    # isolated: its own process, sized by the environment (OpenBLAS caps it at the machine's 2 cores)
    assert client.submit(pool_sizes, cores=2, isolate=True, pure=False).result(timeout=60) == {"blas": 2, "openmp": 2}


def test_an_app_gets_its_cores_as_pool_sizes(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    script = "echo $OMP_NUM_THREADS $OPENBLAS_NUM_THREADS $MKL_NUM_THREADS"
    assert client.submit_app(["sh", "-c", script], cores=3).result(timeout=60).stdout_tail == "3 3 3"


def test_pool_variables_the_nanny_left_out_are_pinned_alike() -> None:
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PATH": "/bin"}
    pin_missing(env)
    assert {name: env[name] for name in POOL_VARIABLES} == dict.fromkeys(POOL_VARIABLES, "1") and env["PATH"] == "/bin"
    mixed = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "4"}
    pin_missing(mixed)  # no value they agree on: left as they are
    assert mixed == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "4"}
    none: dict[str, str] = {}
    pin_missing(none)
    assert none == {}


def worker_pools() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in POOL_VARIABLES}


def test_a_node_worker_pins_every_pool_variable(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    assert all(w == dict.fromkeys(POOL_VARIABLES, "1") for w in client.run(worker_pools).values())
    script = "echo $BLIS_NUM_THREADS $NUMEXPR_NUM_THREADS $VECLIB_MAXIMUM_THREADS"
    assert client.submit_app(["sh", "-c", script]).result(timeout=60).stdout_tail == "1 1 1"


def whoami() -> tuple[str, int | None, int, int]:
    ctx = current_task()
    assert ctx is not None, "current_task() is None"
    return ctx.key, ctx.task_id, ctx.attempt, ctx.cores


def test_current_task_in_an_isolated_function(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    fut = client.submit(whoami, cores=2, isolate=True, pure=False)
    key, task_id, attempt, cores = fut.result(timeout=60)
    assert key == fut.key and task_id is not None and attempt == 1 and cores == 2


def rank_whoami(comm: object) -> tuple[str, int | None]:
    ctx = current_task()
    assert ctx is not None
    return ctx.key, ctx.task_id


@pytest.mark.mpi
def test_current_task_on_mpi_ranks(ens: tuple[LocalEnsembleCluster, Client]) -> None:
    _, client = ens
    fut = client.submit_mpi(rank_whoami, nodes=1, ranks_per_node=2)
    key, task_id = fut.result(timeout=120)
    assert key == fut.key and task_id is not None
