"""Shared fixtures: real stores (a SQLite file and a PostgreSQL schema per test).

PostgreSQL tests use $BALSAM_DASK_TEST_PG (the test command sets it). Without it they
skip, unless $BALSAM_DASK_REQUIRE_SERVICES=1 (CI), where a missing service fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ENV = "BALSAM_DASK_TEST_PG"


def require_or_skip(what: str) -> None:
    if os.environ.get("BALSAM_DASK_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required here (BALSAM_DASK_REQUIRE_SERVICES=1) but not available")
    pytest.skip(f"{what} not available")


def pg_base_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        require_or_skip(f"PostgreSQL (${PG_ENV})")
    assert url is not None
    return url


def _pg_admin(base: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(base)
    with psycopg.connect(
        host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username, dbname=u.database, autocommit=True
    ) as conn:
        conn.execute(sql)


def new_pg_schema_url() -> tuple[str, str]:
    base = pg_base_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    _pg_admin(base, f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def drop_pg_schema(schema: str) -> None:
    _pg_admin(pg_base_url(), f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Parallel runs (``pytest -n 2 --dist loadgroup``, as scripts/test.sh runs): the tests of the
    one local Slurm cluster run in one process, one after another; the tests of a module's shared
    ``ens`` cluster run in one process (one cluster start per module); and in each process the
    ``slow`` tests start first, so that no long test is left to run alone at the end."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif "ens" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(f"ens-{item.nodeid.split('::')[0]}"))
    if hasattr(config, "workerinput"):  # an xdist worker: every worker sorts alike
        items.sort(key=lambda i: not (i.get_closest_marker("slow") and not i.get_closest_marker("xdist_group")))


@pytest.hookimpl(trylast=True)  # after pytest-xdist named the groups
def pytest_collection_finish(session: pytest.Session) -> None:
    """A parallel run whose groups pytest-xdist did not apply stops here: its Slurm tests would
    share the one cluster (xdist 3.8 under pytest 9.2 drops the groups silently)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None and not item.nodeid.endswith(f"@{mark.args[0]}"):
            raise pytest.UsageError(
                f"pytest-xdist did not put {item.nodeid} in its group {mark.args[0]!r}: "
                "use the versions pyproject.toml's test extra gives (pip install -e '.[test]')"
            )


@pytest.fixture(autouse=True, scope="session")
def _config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The keys of PostgreSQL test stores (``store/signing.py``: under $XDG_CONFIG_HOME) go to
    a directory of this test run, not the user's ~/.config (processes the tests start inherit it)."""
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    yield
    if old is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = old


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """A URL to an empty store: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/balsam.db"
        return
    url, schema = new_pg_schema_url()
    try:
        yield url
    finally:
        drop_pg_schema(schema)


@pytest.fixture
def store(store_url: str) -> Iterator[object]:
    from balsam_dask.store import Store

    s = Store(store_url)
    try:
        yield s
    finally:
        s.close()


# the shared LocalEnsembleCluster of the integration tests, for every test directory
from tests.clusters import ens, module_dir  # noqa: E402,F401
