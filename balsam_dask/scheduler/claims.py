"""Database tasks a service asks the scheduler to run: claimed from the store under the
plugin's session (so kill requests reach it), adopted by key, described for the node.

``balsam-dask serve`` calls the ``balsam_claim`` handler, then submits each returned task
under its key with its spec as the annotation and ``run_db_task(job)`` as the function; the
plugin recognizes the key and tracks the existing row instead of creating one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from balsam_dask.protocol import BundledCall, wire_spec
from balsam_dask.spec import TaskSpec
from balsam_dask.store.api import Store
from balsam_dask.store.ops import AppRecord, TaskRecord
from balsam_dask.taskdb.job import DbJob

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def task_key(t: TaskRecord) -> str:
    """A database task's Dask key: a readable label and its id (unique in the store)."""
    label = t.name or t.app or (t.function or "task").rsplit(":", 1)[-1]
    return f"{_UNSAFE.sub('_', label)[:60]}-{t.id}"


def claim_jobs(store: Store, limit: int, lease: float, tags: dict[str, str] | None = None,
               apps: list[str] | None = None, app_defs: dict[tuple[str, int], AppRecord] | None = None,
               ) -> list[dict[str, Any]]:  # fmt: skip
    """Lease up to ``limit`` runnable database tasks; for each: key, task id, state, attempt,
    spec (``TaskSpec.to_json`` with name and tags) and job (``DbJob`` fields). ``app_defs``: the
    app versions read so far (a version never changes), filled in."""
    claimed = store.claim_runnable(limit, lease=lease, tags=tags, apps=apps)
    if not claimed:
        return []
    app_defs = {} if app_defs is None else app_defs
    for t in claimed:
        if t.app and (t.app, t.app_version or 0) not in app_defs:
            app_defs[(t.app, t.app_version or 0)] = store.app(t.app, t.app_version)
    parent_ids = {p for t in claimed if t.input_files for p in t.parents}
    workdirs = {p.id: p.workdir for p in store.tasks(ids=sorted(parent_ids), limit=None)} if parent_ids else {}
    out = []
    specs: dict[str, dict[str, Any]] = {}  # one spec, checked once, for the tasks that share it
    for t in claimed:
        text = json.dumps([t.spec, t.name, t.tags], sort_keys=True)
        spec_json = specs.get(text)
        if spec_json is None:
            spec = TaskSpec.from_json(t.spec, name=t.name, tags=t.tags)
            spec_json = specs[text] = {**spec.to_json(), "name": spec.name, "tags": spec.tag_dict}
        app = app_defs.get((t.app, t.app_version or 0)) if t.app else None
        job = DbJob(
            task_id=t.id, name=task_key(t).rsplit("-", 1)[0], function=t.function, args=tuple(t.args or ()),
            params=dict(t.params or {}),
            inputs=tuple((p, str(workdirs[p]), g) for p in t.parents if workdirs.get(p) for g in (t.input_files or ())),
            stage_in=tuple(t.stage_in or ()), stage_out=tuple(t.stage_out or ()),
            hooks=dict(app.hooks) if app else {},
        )  # fmt: skip
        out.append({"key": task_key(t), "task_id": t.id, "state": t.state, "attempt": t.attempt, "spec": spec_json,
                    "job": job.to_dict()})  # fmt: skip
    return out


def bundleable(item: dict[str, Any]) -> bool:
    """A claimed task a node's executor can run: serial, not an MPI launch (those are gangs
    and launches the dispatcher reserves nodes for)."""
    spec = item["spec"]
    return spec.get("kind") != "mpi" and int(spec.get("nodes") or 1) == 1


def bundled_calls(items: list[dict[str, Any]]) -> list[BundledCall]:
    """Claimed items as bundled calls (one pickled spec per distinct spec)."""
    wired: dict[str, bytes] = {}
    by_id: dict[int, bytes] = {}  # claim_jobs gives the items of one spec the same dict
    out: list[BundledCall] = []
    for item in items:
        wire = by_id.get(id(item["spec"]))
        if wire is None:
            text = json.dumps(item["spec"], sort_keys=True)
            wire = wired.get(text)
            if wire is None:
                wire = wired[text] = wire_spec(spec_of(item))
            by_id[id(item["spec"])] = wire
        out.append({"key": item["key"], "spec": wire, "priority": int(item["spec"].get("priority") or 0),
                    "job": item["job"]})  # fmt: skip
    return out


def spec_of(item: dict[str, Any]) -> TaskSpec:
    """The TaskSpec of a claimed item (as :func:`claim_jobs` described it)."""
    data = dict(item["spec"])
    return TaskSpec.from_json(data, name=data.pop("name", None), tags=data.pop("tags", None))


def job_of(item: dict[str, Any]) -> DbJob:
    """The DbJob of a claimed item."""
    return DbJob.from_dict(item["job"])
