"""``balsam-dask serve --site DIR``: the site's store, cluster, allocation sizing and options.

A local site starts its emulated nodes; a batch site starts none and sizes its allocations
with the packing policy from the store's whole backlog (tasks not yet claimed included), read
every few seconds off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from balsam_dask.deploy.site import adapt_for_site, cluster_for_site, load_site
from balsam_dask.errors import InvalidSpec
from balsam_dask.packing.policy import BacklogShape
from balsam_dask.serve.service import ServeOptions, ServePlan
from balsam_dask.store.api import Store
from balsam_dask.store.states import BACKLOG_STATES, RUNNABLE_STATES

#: Seconds between reads of the store's backlog for allocation sizing.
BACKLOG_EVERY = 5.0


class StoreBacklog:
    """The store's waiting tasks by shape, for ``PolicyAdaptive(extra_backlog=...)``: the
    adaptive loop calls it on the event loop, so it returns the last reading and asks for the
    next one in a thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.shapes: list[BacklogShape] = []
        self._at = -1e9
        self._reading = False

    def read(self) -> list[BacklogShape]:
        out = []
        for b in self.store.backlog(states=BACKLOG_STATES):
            waiting = b.count(RUNNABLE_STATES) + b.counts.get("AWAITING_PARENTS", 0)
            if waiting:
                out.append(BacklogShape(b.nodes, b.cores, b.gpus, b.walltime or None, waiting))
        return out

    def __call__(self) -> list[BacklogShape]:
        now = time.monotonic()
        if now - self._at >= BACKLOG_EVERY and not self._reading:
            self._at, self._reading = now, True
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(None, self.read)
            fut.add_done_callback(self._done)
        return self.shapes

    def _done(self, fut: asyncio.Future[list[BacklogShape]]) -> None:
        self._reading = False
        if not fut.cancelled() and fut.exception() is None:
            self.shapes = fut.result()


def site_plan(site_dir: str, *, nodes: int | None = None, overrides: dict[str, Any] | None = None,
              store: Store | None = None) -> ServePlan:  # fmt: skip
    """The plan for ``serve --site``: the site's store (unless ``store`` is given), its options
    under ``overrides`` (ServeOptions fields), ``nodes`` for a local site."""
    site = load_site(site_dir)
    if nodes is not None and site.is_batch:
        raise InvalidSpec(f"--nodes is for local sites: a {site.scheduler} site sizes its allocations by its limits "
                          f"(edit limits: in {site_dir}/site.yaml)")  # fmt: skip
    store = store or Store(site.store, kind="serve")
    s = site.serve
    fields: dict[str, Any] = {"lease": s.lease, "idle_ttl": s.idle_ttl, "persistent": s.persistent,
                              "max_in_flight": s.max_in_flight, "tags": dict(site.tasks.tags) or None,
                              "apps": list(site.tasks.apps) or None}  # fmt: skip
    options = ServeOptions(**{**fields, **(overrides or {})})
    url = store.url.render_as_string(hide_password=False)

    async def make() -> Any:
        cluster = await cluster_for_site(site, nodes=nodes, asynchronous=True, store=url)
        if site.is_batch:
            adapt_for_site(cluster, site, extra_backlog=StoreBacklog(store))
        return cluster

    return ServePlan(store, make, options)
