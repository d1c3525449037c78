"""The live page's side of the scheduler plugin: the allocations it recorded, the history of the
task counts, snapshots of its in-memory state (``scheduler/snapshot.py``) and the page on
Dask's dashboard (``scheduler/page.py``), installed when the dashboard is on."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Hashable
from typing import Any

from balsam_dask.scheduler.recorder import ALL_STATES
from balsam_dask.scheduler.snapshot import OTHER, AllocationInput, History, NodeInput, Snapshot, take
from balsam_dask.store.states import ALLOCATION_ENDED

log = logging.getLogger(__name__)


class Live:
    def __init__(self, plugin: Any) -> None:
        """``plugin``: the BalsamPlugin whose placer, dispatcher and recorder are shown."""
        self.plugin = plugin
        self.allocations: dict[int, dict[str, Any]] = {}  # live ones, by store id
        self.history = History(ALL_STATES)
        self.app: Any = None  # the page's Bokeh server application, while installed
        self.pages: weakref.WeakSet[Any] = weakref.WeakSet()  # the open pages (one per browser tab)
        self.page_cpu = 0.0  # CPU seconds the pages' updates took, closed pages' included

    def allocation(self, alloc_id: int, fields: dict[str, Any]) -> None:
        """An allocation's record changed (an ended one is no longer shown)."""
        record = self.allocations.setdefault(alloc_id, {})
        record.update(fields)
        if record.get("state") in ALLOCATION_ENDED:
            del self.allocations[alloc_id]

    def sample(self, now: float | None = None) -> None:
        """One sample of the counts by state (the plugin's poll takes one a second)."""
        self.history.sample(time.time() if now is None else now, self.plugin.recorder.counts)

    def snapshot(self, since: float = 0.0, now: float | None = None) -> Snapshot:
        """The page's data; the history's samples after ``since``. O(nodes + running tasks)."""
        p = self.plugin
        now = time.time() if now is None else now
        d, placer, rec = p.dispatcher, p.placer, p.recorder
        names = d.names if d is not None else {}
        nodes = [NodeInput(placer.node(a), names.get(a, a), placer.usage(a)) for a in placer.nodes()]
        by_id = rec.by_id

        def kind_of(task_id: Hashable) -> str:
            track = by_id.get(task_id)
            return track.spec.kind if track is not None and track.spec is not None else OTHER

        allocs = [AllocationInput(r.get("scheduler_id") or f"#{aid}", r.get("system") or "-", r.get("state") or "-",
                                  r.get("nodes") or 0, r.get("walltime") or None, r.get("started_at"))
                  for aid, r in self.allocations.items()]  # fmt: skip
        gangs = dict(d.gangs) if d is not None else {}
        return take(now, nodes, kind_of, gangs, placer.reservations(), placer.held(), allocs, rec.counts,
                    self.history, rec.failures, since)  # fmt: skip

    def install(self, scheduler: Any) -> None:
        """Serve the page at ``/balsam`` on the scheduler's dashboard, if it has one."""
        try:
            from balsam_dask.scheduler.page import install
        except ImportError as e:  # no bokeh: Dask has no dashboard either
            log.debug("balsam_dask: no live page: %s", e)
            return
        try:
            self.app = install(scheduler, self)
        except Exception as e:  # the page is an extra: the scheduler runs without it
            log.warning("balsam_dask: the dashboard's Balsam page could not be added: %s", e)

    def remove(self, scheduler: Any) -> None:
        if self.app is not None:
            from balsam_dask.scheduler.page import uninstall

            app, self.app = self.app, None
            try:
                uninstall(scheduler, app)
            except Exception as e:
                log.warning("balsam_dask: the dashboard's Balsam page could not be taken out: %s", e)
