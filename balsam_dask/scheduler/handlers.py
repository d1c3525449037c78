"""The scheduler's RPC handlers the plugin adds, each as ``balsam_<name>``: what the
``balsam_dask.Client`` (and the CLI, the clusters) ask of a running scheduler."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Hashable
from typing import Any

from balsam_dask.protocol import ResumeItem
from balsam_dask.scheduler.claims import bundleable, bundled_calls, claim_jobs
from balsam_dask.scheduler.resume import claim_for_resume

NAMES = ("info", "kill", "resume", "status", "states", "flush", "declare_nodes", "claim", "renew")


class Handlers:
    def __init__(self, plugin: Any) -> None:
        """``plugin``: the BalsamPlugin whose parts the handlers read (its store, dispatcher,
        recorder, writer)."""
        self.plugin = plugin
        self.app_defs: dict[tuple[str, int], Any] = {}  # app versions read by claims (they never change)

    def install(self, scheduler: Any) -> None:
        for name in NAMES:
            scheduler.handlers[f"balsam_{name}"] = getattr(self, name)

    def remove(self, scheduler: Any) -> None:
        """Take out the handlers this object installed (a later plugin's stay)."""
        for name in NAMES:
            if getattr(scheduler.handlers.get(f"balsam_{name}"), "__self__", None) is self:
                del scheduler.handlers[f"balsam_{name}"]

    def info(self) -> dict[str, Any]:
        p = self.plugin
        assert p.store is not None
        shapes = [{"cores": c.cores, "gpus": c.gpus} for c in p.nodes.values()] + p.declared_shapes
        widest = max(p.placer.max_gang_width(), p.max_nodes_per_allocation or 0)
        return {"store": p.store.where, "session": p.store.session_id, "node_shapes": shapes,
                "max_nodes": widest or None}  # fmt: skip

    def declare_nodes(self, shapes: list[dict[str, int]]) -> None:
        self.plugin.declared_shapes = list(shapes)

    def kill(self, keys: list[Hashable] | None = None, tags: dict[str, str] | None = None,
             reason: str = "killed on request", client: str | None = None) -> list[str]:  # fmt: skip
        chosen = list(keys or [])
        if tags:
            want = set(tags.items())
            tracks = self.plugin.recorder.tracks
            chosen += [k for k, t in tracks.items() if t.spec is not None and want <= set(t.spec.tags)]
        return self.plugin.kill(chosen, reason=reason, client=client)

    def status(self) -> dict[str, Any]:
        p = self.plugin
        placer, w = p.placer, p.writer
        stats = w.stats
        return {
            "nodes": {n: dataclasses.asdict(placer.node(n)) for n in placer.nodes()},
            "waiting": len(placer.waiting()),
            "running": len(placer.running()),
            "anomalies": list(p.recorder.anomalies),
            "bundled": p.bundler.stats() if p.bundler is not None else {},
            "errors": list(p.errors),
            "writer": {"pending": w.pending, "in_flight": w.in_flight, "written": stats.written,
                       "rejected": len(stats.rejected), "retries": stats.retries, "restarts": stats.restarts,
                       "last_error": stats.last_error, "alive": w.alive, "pid": w.pid},
        }  # fmt: skip

    def states(self, keys: list[Any]) -> dict[str, int]:
        """Counts by Balsam state of the tasks ``keys`` name (``UNKNOWN``: not recorded)."""
        tracks = self.plugin.recorder.tracks
        out: dict[str, int] = {}
        for key in keys:
            track = tracks.get(as_key(key))
            state = track.state if track is not None else "UNKNOWN"
            out[state] = out.get(state, 0) + 1
        return out

    async def flush(self, timeout: float = 60.0) -> bool:
        loop = asyncio.get_running_loop()
        return bool(await loop.run_in_executor(None, self.plugin.writer.flush, timeout))

    async def resume(self, limit: int | None = None) -> list[ResumeItem]:
        p = self.plugin
        assert p.store is not None
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(None, claim_for_resume, p.store, limit)
        for item in plan:
            p.resumed[item["key"]] = (item["task_id"], item["state"], item["attempt"])
            p.resumed_data.update(item["data"])
        return plan

    async def claim(self, limit: int, lease: float, tags: dict[str, str] | None = None,
                    apps: list[str] | None = None, owner: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Lease runnable database tasks to this scheduler's session and expect their keys
        (``balsam-dask serve`` submits them next); with an ``owner`` (the service's client id)
        they run bundled at once, their outcomes sent to it."""
        p = self.plugin
        assert p.store is not None
        loop = asyncio.get_running_loop()
        items = await loop.run_in_executor(None, claim_jobs, p.store, limit, lease, tags, apps, self.app_defs)
        if owner is not None and p.bundler is not None:
            bundle = [i for i in items if bundleable(i)]
            for item in bundle:
                item["bundled"] = True
            p.bundler.submit(owner, bundled_calls(bundle), None,
                             {i["key"]: (i["task_id"], i["state"], i["attempt"]) for i in bundle})  # fmt: skip
        for item in items:  # a database task: its end settles its children
            if item.get("bundled"):
                continue
            p.resumed[item["key"]] = (item["task_id"], item["state"], item["attempt"], True)
        return items

    async def renew(self, lease: float, release: list[int] | None = None) -> int:
        """Extend this session's leases; give back the tasks in ``release`` not started."""
        p = self.plugin
        assert p.store is not None
        loop = asyncio.get_running_loop()
        if release:
            await loop.run_in_executor(None, p.store.release_leases, release)
        return int(await loop.run_in_executor(None, p.store.renew_leases, lease))


def as_key(key: Any) -> Any:
    """A Dask key as sent in a message (tuples arrive as lists) back to its hashable form."""
    return tuple(as_key(k) for k in key) if isinstance(key, list) else key
