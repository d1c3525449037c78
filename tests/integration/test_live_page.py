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
                text = browser.text_when(lambda t: ERROR in t and "cores 4/4 busy" in t, timeout=60)
                assert "2 nodes" in text and "cores 4/4 busy" in text, text
                for node in ("node-0", "node-1"):  # its row in the nodes' table: allocation, cores busy
                    assert re.search(rf"{node}\s+local-\S+\s+2/2", text), text
                assert ERROR in text and "boom" in text, text  # the failure, with its error tail
                assert "RUNNING 4" in text and "FAILED 1" in text, text
                assert "python" in text and "app" in text, text
                browser.screenshot(tmp_path / "live-page.png")
                # it updates by itself: the sleeping tasks killed, their cores come back
                client.cancel([*naps, app])
                text = browser.text_when(lambda t: "cores 0/4 busy" in t and "KILLED 4" in t, timeout=60)
                assert "cores 0/4 busy" in text and "KILLED 4" in text, text
        # Dask's own pages link to it from their menu (rendered by the server, in the page's HTML)
        with urllib.request.urlopen(f"{base}/status", timeout=30) as r:
            status = r.read().decode()
        assert '<a href="balsam">Balsam</a>' in status and '<a href="workers">Workers</a>' in status
    # the closed plugin took the page and its menu entry out again
    assert cluster.plugin.live.app is None
    assert "balsam" not in template_variables(cluster.scheduler)["pages"]
    png = (tmp_path / "live-page.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
