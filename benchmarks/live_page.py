"""Throughput with the dashboard's Balsam page open in a browser vs closed, in one run.

    python benchmarks/live_page.py --tasks 2000 --repeat 3 --nodes 2

One ``LocalEnsembleCluster`` (``--nodes`` single-core node-workers, its dashboard on loopback)
runs ``--tasks`` no-op tasks placed by the plugin (``cores=1``) per run, waited for and the
store flushed (untimed). Runs rotate (each repetition starts one side later) between
"closed" (no browser shows the page), "open" (a headless Chromium shows ``/balsam``: started,
its first render awaited and ``--settle`` seconds let pass before the run; stopped after it;
its Bokeh session gone before the next run), "open-paused" (the same, the browser stopped by
SIGSTOP once the page settled and continued after the run, as a laptop gone to sleep: the page's
session and its updates go on, unread, and the browser takes no CPU) and
"blank" (the same browser showing about:blank: what a browser on the same cores costs without the
page; open / blank is the page's own cost).
The open runs pay for the page's whole cost: the plugin's snapshot and the Bokeh document's
update on the scheduler's event loop every second, the messages to the browser, and the
browser itself on the same cores; paused, the updates that no browser reads pile up in the
scheduler's socket buffers.

Also the CPU time the open page's updates took on the scheduler's event loop during the open
runs (``Live.page_cpu``: snapshot, model changes, serialization, websocket write), per second;
the CPU the browser's processes used per second of run (open, blank); and, on the
scheduler at the end: the time of one snapshot (``Live.snapshot``) and of one page
update (``BalsamPage.update``, without a browser: the Python side), medians of 200.

Reported: each side's median tasks/s, the ratios of the medians (open / closed) and the
medians of the paired ratios (each repetition's open run over its closed run), target >= 0.95;
and the scheduler's event-loop thread's CPU per task (open / closed): on a shared host, where
wall times scatter, what the page costs the scheduler itself.
Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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


def loop_cpu(dask_scheduler: Any) -> float:
    """CPU seconds the scheduler's event-loop thread has used (run on that thread)."""
    return time.thread_time()


def page_cpu(dask_scheduler: Any) -> float:
    """CPU seconds the open pages' updates have taken on the event loop (sending included)."""
    return float(dask_scheduler.plugins["balsam-dask"].live.page_cpu)


def one_run(client: Client, n: int, browser: Chromium | None = None) -> tuple[float, float, float, float]:
    """Tasks per second of ``n`` placed no-op tasks, and the scheduler's event loop's CPU
    milliseconds per task meanwhile, the open pages' CPU milliseconds per second of the run and
    the browser's (CPU times: unlike wall time, not stretched by other processes taking the cores)."""
    c0, p0 = client.run_on_scheduler(loop_cpu), client.run_on_scheduler(page_cpu)
    b0 = browser.cpu() if browser is not None else 0.0
    t0 = time.perf_counter()
    futures = client.map(noop, range(n), pure=False, cores=1)
    wait(futures)
    elapsed = time.perf_counter() - t0
    cpu = (client.run_on_scheduler(loop_cpu) - c0) * 1000 / n
    page = (client.run_on_scheduler(page_cpu) - p0) * 1000 / elapsed
    shown = (browser.cpu() - b0) * 1000 / elapsed if browser is not None else 0.0
    del futures
    client.run_on_scheduler(flush_store)
    return n / elapsed, cpu, page, shown


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
    sides = ("closed", "open", "open-paused", "blank")
    rates: dict[str, list[float]] = {side: [] for side in sides}
    cpus: dict[str, list[float]] = {side: [] for side in sides}
    pages: list[float] = []
    browsers: dict[str, list[float]] = {side: [] for side in sides[1:]}
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
                for side in sides[rep % len(sides) :] + sides[: rep % len(sides)]:
                    wait_closed(client)
                    if side == "closed":
                        rate, cpu, _, _ = one_run(client, args.tasks)
                    elif side == "blank":  # the same browser on the same cores, showing no page
                        with Chromium("about:blank") as browser:
                            browser.text_when(lambda t: True, timeout=120)
                            time.sleep(args.settle)
                            rate, cpu, _, shown = one_run(client, args.tasks, browser)
                            browsers[side].append(shown)
                    else:
                        with Chromium(url) as browser:
                            text = browser.text_when(lambda t: "nodes" in t and "busy" in t, timeout=120)
                            if "busy" not in text:
                                raise RuntimeError(f"the page did not render: {text[:300]!r}")
                            time.sleep(args.settle)  # the page loaded: its steady cost is measured
                            if side == "open-paused":
                                os.killpg(browser.proc.pid, signal.SIGSTOP)
                            try:
                                rate, cpu, page, shown = one_run(client, args.tasks, browser)
                            finally:
                                os.killpg(browser.proc.pid, signal.SIGCONT)
                            if side == "open":
                                pages.append(page)
                            browsers[side].append(shown)
                    rates[side].append(rate)
                    cpus[side].append(cpu)
                    print(f"repetition {rep + 1} {side:10s}: {rate:8.1f} tasks/s, scheduler loop {cpu:.3f} ms CPU/task",
                          flush=True)  # fmt: skip
            micro = client.run_on_scheduler(costs)
    med = {side: statistics.median(r) for side, r in rates.items()}
    print(f"\n{args.tasks} no-op tasks on {args.nodes} nodes, {args.repeat} repetitions (medians):")
    figures: dict[str, Any] = {"tasks": args.tasks, "repeat": args.repeat, "nodes": args.nodes}
    for side in sides:
        key = side.replace("-", "_")
        figures[f"{key}_tasks_per_s"] = round(med[side], 1)
        figures[f"{key}_loop_cpu_ms_per_task"] = round(statistics.median(cpus[side]), 4)
        print(f"  page {side:10s}: {med[side]:8.1f} tasks/s, {statistics.median(cpus[side]):.3f} ms loop CPU/task")
    for side in sides[1:]:
        key = side.replace("-", "_")
        paired = statistics.median(o / c for o, c in zip(rates[side], rates["closed"], strict=True))
        figures[f"ratio_{key}_over_closed"] = round(med[side] / med["closed"], 3)
        figures[f"paired_{key}_over_closed"] = round(paired, 3)
        cpu_ratio = statistics.median(cpus[side]) / statistics.median(cpus["closed"])
        figures[f"loop_cpu_{key}_over_closed"] = round(cpu_ratio, 3)
        print(f"  {side} / closed: {med[side] / med['closed']:.3f} (paired: {paired:.3f}; target >= 0.95); "
              f"loop CPU per task {cpu_ratio:.3f}x")  # fmt: skip
    paired = statistics.median(o / b for o, b in zip(rates["open"], rates["blank"], strict=True))
    figures["paired_open_over_blank"] = round(paired, 3)
    print(f"  open / blank (the page's own cost, the browser present in both): paired {paired:.3f}")
    print(f"  the open page's updates on the scheduler's event loop, sending included: "
          f"{statistics.median(pages):.2f} ms CPU per second of run")  # fmt: skip
    for side, used in browsers.items():
        figures[f"browser_{side.replace('-', '_')}_cpu_ms_per_s"] = round(statistics.median(used), 1)
        print(f"  the browser ({side}): {statistics.median(used):.1f} ms CPU per second of run")
    print(f"  one snapshot: {micro['snapshot_us']:.0f} us; one page update: {micro['page_update_us']:.0f} us")
    figures.update(page_cpu_ms_per_s=round(statistics.median(pages), 3), snapshot_us=round(micro["snapshot_us"], 1),
                   page_update_us=round(micro["page_update_us"], 1))  # fmt: skip
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
