"""The dashboard's Balsam page in a real browser: a LocalEnsembleCluster with its dashboard on
(loopback), busy nodes and a failed task, the page loaded in headless Chromium, its rendered
text read (through Bokeh's shadow roots) and a screenshot taken."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from distributed.dashboard.scheduler import template_variables

from balsam_dask import Client, LocalEnsembleCluster
from tests.browser import Chromium, chromium_path
from tests.conftest import require_or_skip

ERROR = "the-distinctive-failure-42"


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def boom() -> None:
    raise ValueError(ERROR)


#: The header's row: nodes, cores busy, GPUs busy, allocations, tasks by state, updated.
SUMMARY = re.compile(r"updated\s+(\d+)\s+(\d+/\d+)\s+(\S+)\s+(\d+)\s+(.*?)\s+\d\d:\d\d:\d\d")


def summary(text: str) -> tuple[str, ...]:
    m = SUMMARY.search(text)
    return m.groups() if m else ()


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_the_balsam_page_shows_the_nodes_their_busy_cores_and_the_failed_tasks_error(tmp_path: Path) -> None:
    if chromium_path() is None:
        require_or_skip("chromium (apt-get install -y chromium)")
    with LocalEnsembleCluster(nodes=2, cores_per_node=2, store=f"sqlite:///{tmp_path}/balsam.db", workdir=tmp_path,
                              dashboard_address=":0") as cluster:  # fmt: skip
        port = cluster.scheduler.http_server.port
        base = f"http://127.0.0.1:{port}"
        with Client(cluster) as client:
            bad = client.submit(boom, name="boom")
            with pytest.raises(ValueError, match=ERROR):
                bad.result(timeout=60)
            naps = [client.submit(nap, 120, cores=1, name=f"nap-{i}", pure=False) for i in range(3)]
            app = client.submit_app(["sleep", "120"], cores=1, name="sleeper")
            wait_for(lambda: client.balsam_status()["running"] == 4)
            with Chromium(f"{base}/balsam") as browser:
                text = browser.text_when(lambda t: ERROR in t and summary(t)[1:2] == ("4/4",), timeout=60)
                nodes, cores, gpus, allocations, states = summary(text)
                assert (nodes, cores, gpus, allocations) == ("2", "4/4", "-", "1"), text
                for node in ("node-0", "node-1"):  # its row in the nodes' table: allocation, cores busy
                    assert re.search(rf"{node}\s+local-\S+\s+2/2", text), text
                assert ERROR in text and "boom" in text, text  # the failure, with its error tail
                assert "RUNNING 4" in states and "FAILED 1" in states, text
                assert all(k in text for k in ("python", "app", "mpi", "free", "AWAITING_PARENTS", "KILLED")), text
                browser.screenshot(tmp_path / "live-page.png")
                # it updates by itself: the sleeping tasks killed, their cores come back
                client.cancel([*naps, app])
                text = browser.text_when(lambda t: summary(t)[1:2] == ("0/4",) and "KILLED 4" in summary(t)[4],
                                         timeout=60)  # fmt: skip
                assert "RUNNING" not in summary(text)[4], text
        # Dask's own pages link to it from their menu (rendered by the server, in the page's HTML)
        with urllib.request.urlopen(f"{base}/status", timeout=30) as r:
            status = r.read().decode()
        assert '<a href="balsam">Balsam</a>' in status and '<a href="workers">Workers</a>' in status
    # the closed plugin took the page and its menu entry out again
    assert cluster.plugin.live.app is None
    assert "balsam" not in template_variables(cluster.scheduler)["pages"]
    png = (tmp_path / "live-page.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
