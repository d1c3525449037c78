"""Throughput with the dashboard's Balsam page open in a browser vs closed, in one run.

    python benchmarks/live_page.py --tasks 2000 --repeat 3 --nodes 2

One ``LocalEnsembleCluster`` (``--nodes`` single-core node-workers, its dashboard on loopback)
runs ``--tasks`` no-op tasks placed by the plugin (``cores=1``) per run, waited for and the
store flushed (untimed). Runs alternate between "closed" (no browser shows the page) and
"open" (a headless Chromium shows ``/balsam``: started, its first render awaited and
``--settle`` seconds let pass before the run; stopped after it; its Bokeh session gone before
the next closed run), each repetition starting with the other side than the last. The open
runs pay for the page's whole cost: the
plugin's snapshot and the Bokeh document's update on the scheduler's event loop every second,
the messages to the browser, and the browser itself on the same two cores.

Also, on the scheduler at the end: the time of one snapshot (``Live.snapshot``) and of one
page update (``BalsamPage.update``, without a browser: the Python side), medians of 200.

Reported: each side's median tasks/s, the ratio of the medians (open / closed) and the
median of the paired ratios (each repetition's open run over its closed run). Target: >= 0.95.
Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distributed import wait
from throughput import count, flush_store, noop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/browser.py: the browser driver

from balsam_dask import Client, LocalEnsembleCluster
from tests.browser import Chromium

PAGE = "/balsam"


def sessions(dask_scheduler: Any) -> int:
    """Bokeh sessions of the Balsam page still alive on the scheduler."""
    app = dask_scheduler.plugins["balsam-dask"].live.app
    return len(app.get_sessions(PAGE)) if app is not None else 0


def costs(dask_scheduler: Any, samples: int = 200) -> dict[str, float]:
    """Median microseconds of one snapshot and of one page update (no browser)."""
    from balsam_dask.scheduler.page import BalsamPage

    live = dask_scheduler.plugins["balsam-dask"].live
    page = BalsamPage(live)
    out = {}
    for name, fn in (("snapshot_us", live.snapshot), ("page_update_us", page.update)):
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        out[name] = statistics.median(times)
    return out


def one_run(client: Client, n: int) -> float:
    """Tasks per second of ``n`` placed no-op tasks."""
    t0 = time.perf_counter()
    futures = client.map(noop, range(n), pure=False, cores=1)
    wait(futures)
    rate = n / (time.perf_counter() - t0)
    del futures
    client.run_on_scheduler(flush_store)
    return rate


def wait_closed(client: Client, timeout: float = 120.0) -> None:
    """Until the page's Bokeh session is gone (Bokeh drops a session some seconds after its
    browser left; its periodic updates run until then)."""
    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(sessions):
        if time.monotonic() > deadline:
            raise RuntimeError("the page's Bokeh session outlived its browser")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=count(1), default=2000)
    p.add_argument("--repeat", type=count(1), default=3)
    p.add_argument("--nodes", type=count(1), default=2)
    p.add_argument("--settle", type=float, default=3.0, help="seconds between the page's first render and the run")
    args = p.parse_args(argv)
    rates: dict[str, list[float]] = {"closed": [], "open": []}
    with tempfile.TemporaryDirectory(prefix="live-page-") as work:
        os.chdir(work)
        with (
            LocalEnsembleCluster(nodes=args.nodes, cores_per_node=1, store=f"sqlite:///{work}/balsam.db",
                                 workdir=work, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):  # fmt: skip
            url = f"http://127.0.0.1:{cluster.scheduler.http_server.port}{PAGE}"
            one_run(client, min(args.tasks, 200))  # warm-up (imports, first placements), untimed
            for rep in range(args.repeat):
                order = ("closed", "open") if rep % 2 == 0 else ("open", "closed")
                for side in order:
                    if side == "closed":
                        wait_closed(client)
                        rate = one_run(client, args.tasks)
                    else:
                        with Chromium(url) as browser:
                            text = browser.text_when(lambda t: "nodes" in t and "busy" in t, timeout=120)
                            if "busy" not in text:
                                raise RuntimeError(f"the page did not render: {text[:300]!r}")
                            time.sleep(args.settle)  # the page loaded: its steady cost is measured
                            rate = one_run(client, args.tasks)
                    rates[side].append(rate)
                    print(f"repetition {rep + 1} {side:6s}: {rate:8.1f} tasks/s", flush=True)
            micro = client.run_on_scheduler(costs)
    closed, opened = statistics.median(rates["closed"]), statistics.median(rates["open"])
    paired = statistics.median(o / c for o, c in zip(rates["open"], rates["closed"], strict=True))
    print(f"\n{args.tasks} no-op tasks on {args.nodes} nodes, {args.repeat} repetitions (medians):")
    print(f"  page closed: {closed:8.1f} tasks/s")
    print(f"  page open:   {opened:8.1f} tasks/s")
    print(f"  open / closed: {opened / closed:.3f} (paired: {paired:.3f}; target >= 0.95)")
    print(f"  one snapshot: {micro['snapshot_us']:.0f} us; one page update: {micro['page_update_us']:.0f} us")
    figures = {"tasks": args.tasks, "repeat": args.repeat, "nodes": args.nodes, "closed_tasks_per_s": round(closed, 1),
               "open_tasks_per_s": round(opened, 1), "ratio_open_over_closed": round(opened / closed, 3),
               "paired_open_over_closed": round(paired, 3), "snapshot_us": round(micro["snapshot_us"], 1),
               "page_update_us": round(micro["page_update_us"], 1)}  # fmt: skip
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
