"""``balsam_dask.progress``: futures followed through the scheduler, a filter followed in the
store, plain lines and a live table (on a real pseudo-terminal), and bad input."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from balsam_dask import Client, InvalidSpec, LocalEnsembleCluster, Store, progress


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def no_page(dask_scheduler: Any) -> bool:
    return dask_scheduler.plugins["balsam-dask"].live.app is None


@pytest.fixture(scope="module")
def ens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, str]]:
    d = tmp_path_factory.mktemp("progress")
    url = f"sqlite:///{d}/balsam.db"
    with LocalEnsembleCluster(nodes=2, cores_per_node=2, store=url, workdir=d) as cluster, Client(cluster) as client:
        yield client, url


@pytest.mark.slow
def test_futures_are_followed_by_balsam_state_until_they_end(ens: tuple[Client, str]) -> None:
    client, _ = ens
    assert client.run_on_scheduler(no_page)  # no dashboard: no page
    futures = [client.submit(nap, 0.5 + 0.1 * i, cores=1, pure=False) for i in range(6)]
    futures.append(client.submit(fail, 1, retries=1))  # a failed attempt, retried, then the task fails
    out = io.StringIO()
    counts = progress(futures, mode="plain", stream=out, interval=0.1)
    assert (counts.total, counts.finished, counts.failed, counts.done) == (7, 6, 1, True)
    assert counts.states == {"FINISHED": 6, "FAILED": 1}
    lines = out.getvalue().splitlines()
    assert lines[-1] == "progress: 6/7 finished, 1 failed or killed | FINISHED=6 FAILED=1"
    assert len(lines) >= 2 and any("RUNNING=" in line for line in lines[:-1]), lines  # seen while they ran
    assert len(lines) == len(set(lines))  # a line only when the counts changed
    # a tuple key travels as a list: the scheduler finds its task all the same
    slow = client.submit(nap, 1.0, key=("slow-nap", 1), cores=1)
    out = io.StringIO()
    assert progress(slow, mode="plain", stream=out, interval=0.1).finished == 1
    assert "RUNNING=1" in out.getvalue() and "UNKNOWN" not in out.getvalue(), out.getvalue()
    # a dict of futures, already ended: at once, and nothing shown with mode="none"
    quiet = io.StringIO()
    assert progress(dict(enumerate(futures)), mode="none", stream=quiet).finished == 6
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_a_filter_follows_the_stores_tasks(ens: tuple[Client, str]) -> None:
    client, url = ens
    futures = [client.submit(nap, 0.3, cores=1, tags={"exp": "p2"}, pure=False) for _ in range(4)]
    futures.append(client.submit(nap, 0.1, tags={"exp": "other"}, pure=False))
    out = io.StringIO()
    counts = progress({"tags": {"exp": "p2"}}, store=url, mode="plain", stream=out, interval=0.2)
    assert counts.states == {"FINISHED": 4} and counts.done
    assert out.getvalue().splitlines()[-1] == "progress: 4/4 finished, 0 failed or killed | FINISHED=4"
    with Store(url) as store:  # a Store object is used as it is, and left open
        assert progress({"tags": {"exp": "p2"}, "state": ["FINISHED"]}, store=store, mode="none").finished == 4
        assert store.summary(tags={"exp": "p2"}) == {"FINISHED": 4}
    client.gather(futures)


def test_a_terminal_gets_the_live_table(tmp_path: Path) -> None:
    """``mode='auto'`` on a pseudo-terminal: rich's table with the bar (ended tasks: at once)."""
    url = f"sqlite:///{tmp_path}/balsam.db"
    with Store(url) as store:
        store.add_tasks([{"function": "pkg.mod:fn", "name": f"t-{i}", "tags": {"exp": "tty"}} for i in range(3)])
        store.kill_tasks(tags={"exp": "tty"})  # waiting database tasks end at once: KILLED
    code = f"import balsam_dask; balsam_dask.progress({{'tags': {{'exp': 'tty'}}}}, store={url!r})"
    leader, follower = pty.openpty()
    p = subprocess.Popen([sys.executable, "-c", code], stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        assert p.wait(timeout=60) == 0
        os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert "balsam_dask progress" in screen and "finished / total" in screen and "0/3" in screen, screen
    assert "KILLED" in screen and "━" in screen, screen  # the state's row, and the bar


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("fit-*",), {}, "progress('fit-*') is invalid: give a future, a list or dict of futures, or a filter"),
        (
            ({"tag": {"exp": "a"}},),
            {},
            "progress filter {'tag': {'exp': 'a'}} is invalid: give futures, or a mapping of ids, tags, name, state",
        ),
        (({},), {}, "progress filter {} is invalid"),
        (([1, 2],), {}, "progress([1, 2]) is invalid"),
        (({"tags": {"exp": "a"}},), {"mode": "fancy"}, "mode='fancy' is invalid: use one of auto, live, plain, none"),
        (({"tags": {"exp": "a"}},), {"interval": 0}, "interval=0 is invalid: give seconds > 0"),
        (({"tags": {"exp": "a"}},), {"timeout": -1}, "timeout=-1 is invalid"),
        (({"state": "DONE"},), {}, "state 'DONE' is unknown; use one of: CREATED"),
        (({"tags": {"bad key": 1}},), {}, "tag name 'bad key' is invalid"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, args: tuple[object, ...], kwargs: dict[str, object],
                                      message: str) -> None:  # fmt: skip
    url = f"sqlite:///{tmp_path}/balsam.db"
    Store(url).close()
    out = io.StringIO()
    with pytest.raises(InvalidSpec, match=re.escape(message)):
        progress(*args, store=url, stream=out, **kwargs)  # type: ignore[arg-type]
    assert out.getvalue() == ""  # nothing shown before the error
