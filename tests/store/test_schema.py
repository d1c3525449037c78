"""Migrations from empty, model/migration parity, refusal of a newer schema."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from balsam_dask.errors import SchemaMissing, SchemaTooNew, StoreError
from balsam_dask.store import Store
from balsam_dask.store.engine import normalize_url
from balsam_dask.store.models import Base
from balsam_dask.store.schema import HEAD, REVISIONS, current_revision


def _raw_engine(url: str):  # type: ignore[no-untyped-def]
    return create_engine(normalize_url(url))


def test_migrate_from_empty_matches_the_models(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    s = Store(store_url)
    assert s.revision == HEAD
    with s.engine.connect() as conn:
        assert current_revision(conn) == HEAD
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    # the migration creates exactly what the models declare
    assert diff == [], diff
    s.close()


def test_alembic_head_is_the_known_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from balsam_dask.store.schema import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(cfg)
    assert script.get_current_head() == HEAD
    assert [r.revision for r in script.walk_revisions()][::-1] == list(REVISIONS)


def test_newer_schema_is_refused(store_url: str) -> None:
    Store(store_url).close()
    eng = _raw_engine(store_url)
    with eng.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        before = conn.execute(text("SELECT count(*) FROM sessions")).scalar_one()
    with pytest.raises(SchemaTooNew, match=r"schema revision '9999'.*newer balsam_dask.*pip install -U"):
        Store(store_url)
    with eng.connect() as conn:  # nothing written: no session row, version untouched
        assert conn.execute(text("SELECT count(*) FROM sessions")).scalar_one() == before
        assert current_revision(conn) == "9999"
    eng.dispose()


def test_missing_schema_without_create(store_url: str) -> None:
    with pytest.raises(SchemaMissing, match="balsam-dask init"):
        Store(store_url, create=False)


def test_foreign_tables_are_not_adopted(store_url: str) -> None:
    eng = _raw_engine(store_url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE tasks (id INTEGER PRIMARY KEY, what TEXT)"))
    eng.dispose()
    with pytest.raises(StoreError, match="has balsam_dask tables but no schema version"):
        Store(store_url)


def _in_threads(n: int, fn: Callable[[], object]) -> list[BaseException]:
    """Run ``fn`` in ``n`` threads at once; the exceptions they raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # pragma: no cover - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_creation(store_url: str) -> None:
    stores: list[Store] = []
    assert _in_threads(4, lambda: stores.append(Store(store_url))) == []
    assert {s.revision for s in stores} == {HEAD}
    for s in stores:
        s.close()


def test_many_threads_opening_one_new_sqlite_store(tmp_path: Path) -> None:
    """Turning a new file to WAL makes SQLite answer "database is locked" at once to other
    connections, without its busy handler: opening waits that out (8 threads, 30 new stores;
    before the fix about one round in nine failed)."""
    for i in range(30):
        url = f"sqlite:///{tmp_path}/new{i}.db"
        errors = _in_threads(8, lambda url=url: Store(url).close())
        assert errors == [], f"round {i}: {errors[0]}"


def test_a_0001_store_is_upgraded_to_walltime_classes(store_url: str) -> None:
    """0001 counted shapes by fixed walltime buckets; 0002 recounts them by walltime class."""
    from alembic import command
    from alembic.config import Config

    from balsam_dask.spec import Resources, TaskSpec
    from balsam_dask.store.engine import write_tx
    from balsam_dask.store.schema import MIGRATIONS_DIR

    engine = _raw_engine(store_url)
    with write_tx(engine) as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        sid = conn.execute(text("INSERT INTO sessions (kind, host, pid, started_at, heartbeat_at, info) "
                                "VALUES ('old', 'h', 1, 0, 0, '{}') RETURNING id")).scalar()  # fmt: skip
        for i, wt in enumerate([50.0, 50.0, 3000.0, None]):
            conn.execute(
                text("INSERT INTO tasks (id, key, kind, state, priority, nodes, ranks_per_node, threads_per_rank, "
                     "cores, gpus, walltime, spec, tags, parents, attempt, session_id, kill_requested, "
                     "created_at, updated_at) VALUES (:i, :k, 'python', 'CREATED', 0, 1, 1, 1, 1, 0, :w, '{}', "
                     "'{}', '[]', 0, :s, false, 0, 0)"),
                {"i": i + 1, "k": f"t{i}", "w": wt, "s": sid},
            )  # fmt: skip
        conn.execute(text(  # the old buckets: 50 s -> 60, 3000 s -> 3600
            "INSERT INTO shape_counts (nodes, cores, gpus, walltime, state, count) VALUES "
            "(1, 1, 0, 60.0, 'CREATED', 2), (1, 1, 0, 3600.0, 'CREATED', 1), (1, 1, 0, 0.0, 'CREATED', 1)"
        ))  # fmt: skip
    engine.dispose()
    with Store(store_url) as store:  # opening upgrades
        assert store.revision == HEAD
        shapes = {(b.nodes, b.cores, b.gpus, b.walltime): b.counts for b in store.backlog()}
        assert shapes == {(1, 1, 0, 50.0): {"CREATED": 2}, (1, 1, 0, 3000.0): {"CREATED": 1},
                          (1, 1, 0, 0.0): {"CREATED": 1}}  # fmt: skip
        ids = store.create_tasks([TaskSpec(resources=Resources.serial(1, walltime=50))])
        assert ids and {(b.walltime): b.counts for b in store.backlog()}[50.0] == {"CREATED": 3}


def test_a_0002_store_is_upgraded_to_the_task_database(store_url: str) -> None:
    """0003 adds apps, the database tasks' columns and the DAG's edges: the tasks already there
    keep their rows (NULL in the new columns), and can be parents of database tasks. It
    downgrades to 0002 and back."""
    from alembic import command
    from alembic.config import Config

    from balsam_dask.store.engine import write_tx
    from balsam_dask.store.schema import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = _raw_engine(store_url)
    with write_tx(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        sid = conn.execute(text("INSERT INTO sessions (kind, host, pid, started_at, heartbeat_at, info) "
                                "VALUES ('old', 'h', 1, 0, 0, '{}') RETURNING id")).scalar()  # fmt: skip
        for i, state in ((1, "FINISHED"), (2, "RUNNING")):
            conn.execute(
                text("INSERT INTO tasks (id, key, kind, state, priority, nodes, ranks_per_node, threads_per_rank, "
                     "cores, gpus, walltime, spec, tags, parents, attempt, session_id, kill_requested, "
                     "created_at, updated_at) VALUES (:i, :k, 'python', :st, 0, 1, 1, 1, 1, 0, NULL, '{}', "
                     "'{}', '[]', 1, :s, false, 0, 0)"),
                {"i": i, "k": f"old-{i}", "st": state, "s": sid},
            )  # fmt: skip
            conn.execute(text("INSERT INTO events (task_id, id, attempt, from_state, to_state, ts) "
                              "VALUES (:i, :e, 1, 'READY', :st, 0)"), {"i": i, "e": 10 + i, "st": state})  # fmt: skip
        conn.execute(text("INSERT INTO shape_counts (nodes, cores, gpus, walltime, state, count) VALUES "
                          "(1, 1, 0, 0.0, 'FINISHED', 1), (1, 1, 0, 0.0, 'RUNNING', 1)"))  # fmt: skip
    engine.dispose()
    with Store(store_url) as store:  # opening upgrades
        assert store.revision == HEAD
        old = store.task(1)
        assert (old.state, old.key, old.app, old.function, old.params, old.lease_owner) == (
            "FINISHED", "old-1", None, None, None, None)  # fmt: skip
        assert old.target is None and [e.to_state for e in store.history(2)] == ["RUNNING"]
        store.add_app("sim", "./sim --n {n}")
        ready, waiting = store.add_tasks([{"app": "sim", "params": {"n": 1}, "parents": [1]},
                                          {"app": "sim", "params": {"n": 2}, "parents": [1, 2]}])  # fmt: skip
        assert (store.task(ready).state, store.task(waiting).state) == ("READY", "AWAITING_PARENTS")
        assert store.summary() == {"AWAITING_PARENTS": 1, "READY": 1, "RUNNING": 1, "FINISHED": 1}
    engine = _raw_engine(store_url)
    for target in ("0002", "head"):
        with write_tx(engine) as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if target == "0002" else command.upgrade)(cfg, target)
    with engine.connect() as conn:
        assert current_revision(conn) == HEAD
        assert conn.execute(text("SELECT count(*) FROM tasks WHERE app IS NULL")).scalar_one() == 4  # dropped, re-added
    engine.dispose()


def test_a_0004_store_gets_state_times(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """0005 gives every event already there the time its task entered the state it leaves, the
    end of each run its worker, each task the time it entered its state; 0006 the nodes' busy
    stretches; new events follow."""
    from alembic import command
    from alembic.config import Config

    from balsam_dask.store.engine import write_tx
    from balsam_dask.store.ops import Transition
    from balsam_dask.store.schema import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = _raw_engine(store_url)
    with write_tx(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        sid = conn.execute(text("INSERT INTO sessions (kind, host, pid, started_at, heartbeat_at, info) "
                                "VALUES ('old', 'h', 1, 0, 0, '{}') RETURNING id")).scalar()  # fmt: skip
        for i, state in ((1, "FINISHED"), (2, "RUNNING"), (3, "CREATED")):
            conn.execute(
                text("INSERT INTO tasks (id, key, kind, state, priority, nodes, ranks_per_node, threads_per_rank, "
                     "cores, gpus, walltime, spec, tags, parents, attempt, session_id, kill_requested, "
                     "created_at, updated_at) VALUES (:i, :k, 'python', :st, 0, 1, 1, 1, 1, 0, NULL, '{}', "
                     "'{}', '[]', 1, :s, false, 5, 99)"),
                {"i": i, "k": f"old-{i}", "st": state, "s": sid},
            )  # fmt: skip
        history = [
            (1, 11, 0, "CREATED", "READY", 10.0, None),
            (1, 12, 1, "READY", "RUNNING", 12.0, "node-3"),
            (1, 13, 1, "RUNNING", "RUN_DONE", 20.0, None),
            (1, 14, 1, "RUN_DONE", "FINISHED", 20.0, None),
            (2, 21, 0, "CREATED", "READY", 30.0, None),
            (2, 22, 1, "READY", "RUNNING", 31.5, "node-1"),
        ]
        for tid, eid, att, frm, to, ts, worker in history:
            conn.execute(text("INSERT INTO events (task_id, id, attempt, from_state, to_state, ts, worker) "
                              "VALUES (:t, :e, :a, :f, :s, :ts, :w)"),
                         {"t": tid, "e": eid, "a": att, "f": frm, "s": to, "ts": ts, "w": worker})  # fmt: skip
        conn.execute(text("INSERT INTO shape_counts (nodes, cores, gpus, walltime, state, count) VALUES "
                          "(1, 1, 0, 0.0, 'FINISHED', 1), (1, 1, 0, 0.0, 'RUNNING', 1), "
                          "(1, 1, 0, 0.0, 'CREATED', 1)"))  # fmt: skip
    engine.dispose()
    with Store(store_url) as store:  # opening upgrades, and says so
        assert store.revision == HEAD
        assert f"from schema 0004 to {HEAD} (once; a large store takes a while)" in caplog.text
        with store.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, since, worker FROM events ORDER BY id")).all()
            at = dict(conn.execute(text("SELECT id, state_at FROM tasks")).all())
        assert [tuple(r) for r in rows] == [(11, None, None), (12, 10.0, "node-3"), (13, 12.0, "node-3"),
                                            (14, 20.0, None), (21, None, None), (22, 30.0, "node-1")]  # fmt: skip
        assert at == {1: 20.0, 2: 31.5, 3: 5.0}
        busy = "SELECT worker, started, ended FROM node_busy ORDER BY worker"
        with store.engine.connect() as conn:  # 0006: the busy stretches of the runs already there
            assert [tuple(r) for r in conn.execute(text(busy))] == [("node-3", 12.0, 20.0)]
        store.apply(
            [
                Transition(store.new_id(), 2, "RUNNING", "RUN_DONE", 40.0, 1, "node-1", None, None),
                Transition(store.new_id(), 2, "RUN_DONE", "FINISHED", 41.0, 1, None, None, None),
            ]
        )
        h = store.history(2)
        assert [(e.to_state, e.since) for e in h] == [("READY", None), ("RUNNING", 30.0), ("RUN_DONE", 31.5),
                                                      ("FINISHED", 40.0)]  # fmt: skip
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT state_at FROM tasks WHERE id = 2")).scalar_one() == 41.0
            assert [tuple(r) for r in conn.execute(text(busy))] == [("node-1", 31.5, 40.0), ("node-3", 12.0, 20.0)]
