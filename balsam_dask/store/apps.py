"""The apps table: app definitions (``appdef.AppDef``) added, read and removed."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, delete, func, select, text

from balsam_dask.errors import InvalidSpec, UnknownApp
from balsam_dask.store.models import apps_t, tasks_t
from balsam_dask.store.ops import AppRecord
from balsam_dask.store.states import UNFINISHED_STATES
from balsam_dask.taskdb.apps import AppDef

_PG_APPS_LOCK = 0x6261_6C61  # serializes adding apps on PostgreSQL (versions are counted per name)


def app_record(row: Any) -> AppRecord:
    m = row._mapping
    return AppRecord(**{k: m[k] for k in AppRecord.__slots__})


def app_def(rec: AppRecord) -> AppDef:
    return AppDef(rec.name, rec.command if isinstance(rec.command, str) else tuple(rec.command), rec.version,
                  rec.description, rec.defaults, rec.hooks)  # fmt: skip


def load_apps(conn: Connection, name: str | None = None) -> list[AppRecord]:
    """Apps by name and version (every version)."""
    q = select(apps_t).order_by(apps_t.c.name, apps_t.c.version)
    if name is not None:
        q = q.where(apps_t.c.name == name)
    return [app_record(r) for r in conn.execute(q)]


def app_defs(conn: Connection) -> dict[str, dict[int, AppDef]]:
    """Every app's definitions by name and version (what the row checker looks up)."""
    out: dict[str, dict[int, AppDef]] = {}
    for rec in load_apps(conn):
        out.setdefault(rec.name, {})[rec.version] = app_def(rec)
    return out


def add_app(conn: Connection, app: AppDef) -> tuple[AppRecord, bool]:
    """Store ``app``; (its record, whether it is new). Adding a definition that is already
    stored (the same version, or no version and the same as the latest) returns that one;
    another definition under an existing version is an error."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_APPS_LOCK})
    existing = {r.version: r for r in load_apps(conn, app.name)}
    latest = max(existing, default=0)
    if app.version is None:
        if latest and app_def(existing[latest]).same_as(app):
            return existing[latest], False
        version = latest + 1
    elif app.version in existing:
        if app_def(existing[app.version]).same_as(app):
            return existing[app.version], False
        raise InvalidSpec(
            f"app {app.name} version {app.version} exists with another definition: give a new version, e.g. "
            f"version={latest + 1} (--version {latest + 1}), or remove it first (balsam-dask app rm {app.name} "
            f"--version {app.version})"
        )
    else:
        version = app.version
    values = {**app.to_json(), "version": version, "created_at": time.time()}
    conn.execute(apps_t.insert().values(**values))
    (rec,) = [r for r in load_apps(conn, app.name) if r.version == version]
    return rec, True


def remove_app(conn: Connection, name: str, version: int | None, where: str) -> int:
    """Remove an app (one version, or all); refused while unfinished tasks use it."""
    versions = [r.version for r in load_apps(conn, name)]
    if not versions or (version is not None and version not in versions):
        raise unknown_app(name, version, versions, where)
    conds = [tasks_t.c.app == name, tasks_t.c.state.in_(sorted(UNFINISHED_STATES))]
    if version is not None:
        conds.append(tasks_t.c.app_version == version)
    busy, first = conn.execute(select(func.count(), func.min(tasks_t.c.id)).where(*conds)).one()
    if busy:
        which = name if version is None else f"{name} version {version}"
        raise InvalidSpec(f"app {which} has {busy} unfinished task(s) (e.g. task {first}): they would never run; "
                          f"kill them first, e.g. balsam-dask kill --id {first}")  # fmt: skip
    q = delete(apps_t).where(apps_t.c.name == name)
    if version is not None:
        q = q.where(apps_t.c.version == version)
    return int(conn.execute(q).rowcount)


def unknown_app(name: str, version: int | None, versions: list[int], where: str) -> UnknownApp:
    if versions:
        have = ", ".join(map(str, sorted(versions)))
        return UnknownApp(f"app {name} has no version {version} in {where} (versions: {have})")
    return UnknownApp(f"no app named {name!r} in {where}; add one with balsam-dask app add {name} --command "
                      "'./sim --n {n}' (balsam-dask app ls lists them)")  # fmt: skip
