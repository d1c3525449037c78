"""The "Balsam" page of Dask's dashboard (``/balsam``): a Bokeh document per browser tab,
refreshed every second from a snapshot of the plugin's state (``scheduler/live.py``), served by
the scheduler's own HTTP server and linked from the dashboard's menu."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, CustomJS, FactorRange
from bokeh.models.widgets.markups import Div
from bokeh.models.widgets.tables import DataTable, TableColumn
from bokeh.plotting import figure
from bokeh.server.tornado import BokehTornado
from tornado.ioloop import IOLoop

from balsam_dask.scheduler.snapshot import SAMPLES, USE_KINDS, Snapshot

#: The page's path on the dashboard, and its name in the menu.
PAGE = "balsam"
#: Milliseconds between updates.
INTERVAL = 1000
COLORS = {"python": "#3b75af", "app": "#ef8636", "mpi": "#519e3e", "other": "#8d69b8", "free": "#dddddd"}
#: States drawn over time (the others are in the header's counts).
DRAWN = ("AWAITING_PARENTS", "READY", "RESTART_READY", "RUNNING", "FINISHED", "FAILED", "KILLED")
STATE_COLORS = ("#8d69b8", "#999999", "#c4ad66", "#3b75af", "#519e3e", "#c53a32", "#444444")
#: Pixels per table row (Bokeh's DataTable default row height, and its header's).
ROW = 25
#: Error tails shown whole (the newest failures).
TAILS = 3


def left_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def summary_data(snap: Snapshot) -> dict[str, list[Any]]:
    """The header's one row: what the nodes hold and the tasks by state."""
    busy, cores = snap.cores
    gbusy, gpus = snap.gpus
    counts = " \u00b7 ".join(f"{s} {n}" for s, n in zip(snap.states, snap.counts, strict=True) if n)
    return {"nodes": [len(snap.nodes)], "cores": [f"{busy}/{cores}"], "gpus": [f"{gbusy}/{gpus}" if gpus else "-"],
            "allocations": [len(snap.allocations)], "tasks": [counts or "none yet"],
            "updated": [time.strftime("%H:%M:%S", time.localtime(snap.time))]}  # fmt: skip


def legend_html(items: Iterable[tuple[str, str]]) -> str:
    """A legend of (label, color) as HTML: drawn once, not on every repaint of its plot."""
    return "".join(f"<span style='display: inline-block; margin-right: 12px'><span style='display: inline-block; "
                   f"width: 12px; height: 12px; background: {color}; vertical-align: middle'></span> "
                   f"{html.escape(label)}</span>" for label, color in items)  # fmt: skip


def failures_html(snap: Snapshot) -> str:
    if not snap.failures:
        return "<h3>Recent failures</h3><p>none</p>"
    parts = ["<h3>Recent failures</h3>"]
    for f in snap.failures[:TAILS]:
        when = time.strftime("%H:%M:%S", time.localtime(f.ts))
        parts.append(f"<p><b>{html.escape(f.name)}</b> (task {f.task_id}, {f.kind}) {f.state} at {when}</p>"
                     f"<pre style='white-space: pre-wrap; max-height: 16em; overflow: auto; background: #f6f6f6; "
                     f"padding: 4px'>{html.escape(f.tail) or '(no error text)'}</pre>")  # fmt: skip
    return "".join(parts)


def nodes_data(snap: Snapshot) -> dict[str, list[Any]]:
    n = snap.nodes
    data: dict[str, list[Any]] = {
        "node": [u.name for u in n], "alloc": [u.alloc_id for u in n],
        "cores": [f"{u.busy_cores}/{u.cores}" for u in n], "gpus": [f"{u.busy_gpus}/{u.gpus}" for u in n],
        "free": [u.free_cores for u in n], "running": [u.running for u in n], "queued": [u.queued for u in n],
        "kept": [_kept(u.gang, u.reserved_for, u.held_for) + (" draining" if u.draining else "") for u in n],
    }  # fmt: skip
    for i, kind in enumerate(USE_KINDS):
        data[kind] = [u.cores_by_kind[i] for u in n]
        data[f"{kind}_gpus"] = [u.gpus_by_kind[i] for u in n]
    return data


def _kept(gang: Any, reserved: Any, held: Any) -> str:
    if gang is not None:
        return f"gang {gang}"
    if reserved is not None:
        return f"reserved for {reserved}"
    return f"held for {held}" if held is not None else ""


def allocations_data(snap: Snapshot) -> dict[str, list[Any]]:
    a = snap.allocations
    return {"job": [x.job_id for x in a], "system": [x.system for x in a], "state": [x.state for x in a],
            "nodes": [f"{x.live_nodes}/{x.nodes}" for x in a], "walltime": [left_text(x.walltime) for x in a],
            "left": [left_text(x.left) for x in a]}  # fmt: skip


def keeps_data(snap: Snapshot) -> dict[str, list[Any]]:
    k = snap.keeps
    return {"task": [str(x.task_id) for x in k], "what": [x.what for x in k], "nodes": [", ".join(x.nodes) for x in k]}


def failures_data(snap: Snapshot) -> dict[str, list[Any]]:
    f = snap.failures
    return {"time": [time.strftime("%H:%M:%S", time.localtime(x.ts)) for x in f], "task": [x.task_id for x in f],
            "name": [x.name for x in f], "kind": [x.kind for x in f], "state": [x.state for x in f],
            "error": [(x.tail.strip().splitlines() or [""])[-1][:200] for x in f]}  # fmt: skip


def history_data(snap: Snapshot) -> dict[str, Any]:
    index = [snap.states.index(s) for s in DRAWN]
    data: dict[str, list[Any]] = {"t": [t * 1000.0 for t, _ in snap.history]}
    for s, i in zip(DRAWN, index, strict=True):
        data[s] = [c[i] for _, c in snap.history]
    return data


def _table(columns: dict[str, str], height: int, widths: dict[str, int] | None = None
           ) -> tuple[ColumnDataSource, DataTable]:  # fmt: skip
    source = ColumnDataSource({c: [] for c in columns})
    cols = [TableColumn(field=f, title=t, width=(widths or {}).get(f, 100)) for f, t in columns.items()]
    table = DataTable(source=source, columns=cols, index_position=None, height=height, sizing_mode="stretch_width")
    # Bokeh's table redraws its rows when their number changes, not when only their values do
    source.js_on_change("data", CustomJS(args={"view": table.view}, code="view.change.emit()"))
    return source, table


class BalsamPage:
    """One browser tab's document: its models, and ``update`` to refresh them from a snapshot."""

    def __init__(self, live: Any) -> None:
        self.live = live
        live.pages.add(self)
        self.since = 0.0
        # Text that changes lives in tables: a changed Div lays the whole page out again, and
        # legends are HTML, not drawn on the canvas at each repaint (the browser's CPU: docs/).
        self.header = Div(text="<h2>Balsam</h2>", sizing_mode="stretch_width")
        self.summary_source, self.summary = _table({"nodes": "nodes", "cores": "cores busy", "gpus": "GPUs busy",
                                                    "allocations": "allocations", "tasks": "tasks by state",
                                                    "updated": "updated"}, 2 * ROW + 4, {"tasks": 600})  # fmt: skip
        self.nodes_source = ColumnDataSource({"node": [], **{k: [] for k in (*USE_KINDS, "free")}})
        self.node_range = FactorRange()
        self.bars = figure(y_range=self.node_range, height=160, sizing_mode="stretch_width", toolbar_location=None,
                           title="cores in use by kind", x_axis_label="cores")  # fmt: skip
        stack = [*USE_KINDS, "free"]
        self.bars.hbar_stack(stack, y="node", height=0.8, source=self.nodes_source, color=[COLORS[k] for k in stack])
        bars_legend = Div(text=legend_html((k, COLORS[k]) for k in stack))
        cols = {"node": "node", "alloc": "allocation", "cores": "cores busy", **{k: k for k in USE_KINDS},
                "gpus": "GPUs busy", "running": "tasks", "queued": "queued",
                "kept": "gang / reserved / held"}  # fmt: skip
        self.nodes_table_source, self.nodes_table = _table(cols, 200)
        self.alloc_source, self.alloc_table = _table({"job": "allocation", "system": "system", "state": "state",
                                                      "nodes": "nodes live/asked", "walltime": "walltime",
                                                      "left": "walltime left"}, 120)  # fmt: skip
        self.keeps_source, self.keeps_table = _table({"task": "task", "what": "gang / reserved / held",
                                                      "nodes": "nodes"}, 120)  # fmt: skip
        self.history_source = ColumnDataSource({"t": [], **{s: [] for s in DRAWN}})
        self.lines = figure(x_axis_type="datetime", height=220, sizing_mode="stretch_width", toolbar_location=None,
                            title="tasks by state")  # fmt: skip
        for s, color in zip(DRAWN, STATE_COLORS, strict=True):
            self.lines.line("t", s, source=self.history_source, color=color, line_width=2)
        lines_legend = Div(text=legend_html(zip(DRAWN, STATE_COLORS, strict=True)))
        self.fail_source, self.fail_table = _table({"time": "time", "task": "task", "name": "name", "kind": "kind",
                                                    "state": "state", "error": "error (last line)"}, 160)  # fmt: skip
        self.tails = Div(text="", sizing_mode="stretch_width")
        self.root = column(
            self.header, self.summary, bars_legend, self.bars, self.nodes_table,
            row(column(Div(text="<h3>Allocations</h3>"), self.alloc_table, sizing_mode="stretch_width"),
                column(Div(text="<h3>Gangs, reservations, holds</h3>"), self.keeps_table, sizing_mode="stretch_width"),
                sizing_mode="stretch_width"),
            self.lines, lines_legend, self.fail_table, self.tails, sizing_mode="stretch_width",
        )  # fmt: skip
        self._shown: dict[str, Any] = {}

    def update(self) -> None:
        """Refresh from a snapshot; the changes leave in one message (Bokeh's ``hold``)."""
        t0 = time.thread_time()
        doc = self.root.document
        try:
            if doc is None:  # not shown (a benchmark timing the Python side)
                self._update()
                return
            doc.hold("combine")
            try:
                self._update()
            finally:
                doc.unhold()
        finally:
            self.live.page_cpu += time.thread_time() - t0  # on the event loop, sending included

    def _update(self) -> None:
        snap = self.live.snapshot(since=self.since)
        if snap.history:
            self.since = snap.history[-1][0]
            self.history_source.stream(history_data(snap), rollover=SAMPLES)
        self._set("summary", self.summary_source, "data", summary_data(snap))
        self._set("tails", self.tails, "text", failures_html(snap))
        nodes = nodes_data(snap)
        if self._shown.get("names") != nodes["node"]:
            self._shown["names"] = nodes["node"]
            self.node_range.factors = list(reversed(nodes["node"]))  # the first node on top
            self.bars.height = 150 + 26 * max(len(nodes["node"]), 1)
        bars = {k: nodes[k] for k in ("node", *USE_KINDS, "free")}
        self._set("bars", self.nodes_source, "data", bars)
        for name, source, table, data, most in (
            ("nodes", self.nodes_table_source, self.nodes_table, nodes, 16),
            ("allocs", self.alloc_source, self.alloc_table, allocations_data(snap), 8),
            ("keeps", self.keeps_source, self.keeps_table, keeps_data(snap), 8),
            ("fails", self.fail_source, self.fail_table, failures_data(snap), 8),
        ):
            self._set(name, source, "data", data)
            self._set(
                f"{name}-height", table, "height", ROW * (1 + min(max(len(next(iter(data.values()))), 1), most)) + 4
            )

    def _set(self, name: str, model: Any, attr: str, value: Any) -> None:
        """Send a value to the browser only when it changed."""
        if self._shown.get(name) != value:
            self._shown[name] = value
            setattr(model, attr, value)


def balsam_doc(live: Any, scheduler: Any, extra: dict[str, Any], doc: Document) -> None:
    """Dask's signature for its dashboard documents (``scheduler``: unused, the snapshot's
    source is ``live``)."""
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    page = BalsamPage(live)
    page.update()
    doc.title = "Dask: Balsam"
    doc.add_root(page.root)
    doc.add_periodic_callback(page.update, INTERVAL)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


def install(scheduler: Any, live: Any) -> BokehTornado | None:
    """Add the page to the scheduler's dashboard and its menu; None when the dashboard is off."""
    http = getattr(scheduler, "http_application", None)
    dashboards = [a for a in getattr(http, "applications", ()) if isinstance(a, BokehTornado)]
    if http is None or not dashboards:
        return None
    from distributed.dashboard.core import BokehApplication
    from distributed.dashboard.scheduler import template_variables

    extra = template_variables(scheduler)  # Dask's own (memoized): the menu of every page
    if PAGE not in extra["pages"]:
        extra["pages"].append(PAGE)
    app = BokehApplication({f"/{PAGE}": partial(balsam_doc, live)}, scheduler, prefix=dashboards[0].prefix,
                           template_variables=extra)  # fmt: skip
    http.add_application(app)
    app.initialize(IOLoop.current())
    app.start()
    return app


def uninstall(scheduler: Any, app: BokehTornado) -> None:
    """Take the page and its menu entry out again."""
    from distributed.dashboard.scheduler import template_variables

    http = scheduler.http_application
    if app in http.applications:
        http.applications.remove(app)
    app.stop()
    pages = template_variables(scheduler)["pages"]
    if PAGE in pages:
        pages.remove(PAGE)
