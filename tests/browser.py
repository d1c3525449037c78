"""A real browser for tests and benchmarks: Debian's headless Chromium, started by this process
and stopped by its pid (its process group), driven over the DevTools protocol with tornado's
websocket client (Dask's own dependency). Bokeh draws its widgets inside shadow roots, which
``--dump-dom`` leaves out: :func:`page_text` reads the text of the rendered page through them."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tornado.websocket import websocket_connect

#: Text of the rendered page, shadow roots included, without style and script elements.
TEXT_JS = """(() => {
  const out = [];
  const walk = (n) => {
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.childNodes) {
      if (c.nodeType === 3) out.push(c.textContent);
      else if ((c.nodeType === 1 && !['STYLE', 'SCRIPT'].includes(c.tagName)) || c.nodeType === 11) walk(c);
    }
  };
  walk(document.body || document);
  return out.join(' ');
})()"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """``with Chromium(url) as browser``: a headless Chromium showing ``url`` until closed
    (``nice``: its CPU priority, 0 to 19: at 19 it runs only on CPU nothing else wants)."""

    def __init__(self, url: str = "about:blank", width: int = 1400, height: int = 1100, nice: int = 0) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
        self.profile = tempfile.mkdtemp(prefix="balsam-chromium-")
        args = ["nice", "-n", str(nice), exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", url]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # fmt: skip
        try:
            self.port = self._port(timeout=30)
        except BaseException:
            self.close()
            raise

    def _port(self, timeout: float) -> int:
        """Chromium writes its DevTools port to ``DevToolsActivePort`` in the profile."""
        path = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if path.exists():
                first = path.read_text().split("\n", 1)[0].strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.05)
        raise RuntimeError(f"chromium did not open its DevTools port within {timeout} s")

    def _page_socket(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            targets = json.loads(r.read())
        return str(next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"))

    def run(self, steps: Callable[[Session], Any]) -> Any:
        """Run ``await steps(session)`` against the open page, in a new event loop."""

        async def main() -> Any:
            conn = await websocket_connect(self._page_socket(), max_message_size=256 * 2**20)
            try:
                return await steps(Session(conn))
            finally:
                conn.close()

        return asyncio.run(main())

    def text_when(self, ready: Callable[[str], bool], timeout: float = 60.0, url: str | None = None) -> str:
        """The page's text once ``ready(text)`` (after going to ``url``, if given); the last
        text seen if it never is, for the caller's assertion to show."""

        async def steps(s: Session) -> str:
            if url is not None:
                await s.call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout
            text = ""
            while time.monotonic() < deadline:
                text = await s.text()
                if ready(text):
                    break
                await asyncio.sleep(0.25)
            return text

        return str(self.run(steps))

    def screenshot(self, path: Path) -> None:
        """A PNG of the whole page (its full height) to ``path``."""

        async def steps(s: Session) -> bytes:
            metrics = await s.call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = await s.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
            return base64.b64decode(shot["data"])

        Path(path).write_bytes(self.run(steps))

    def cpu(self) -> float:
        """CPU seconds the browser's processes (its process group: renderers included) have used."""
        total = 0
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # not a process, or gone
            if int(fields[2]) == self.proc.pid:  # state, ppid, pgrp, ...: utime and stime are 12th, 13th
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        """Stop the browser: its process group (the renderers are its children), by its pid."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        try:  # renderers that outlived the browser process, still in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """DevTools protocol calls on one page's websocket."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        await self.conn.write_message(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            raw = await self.conn.read_message()
            if raw is None:
                raise RuntimeError(f"chromium closed the DevTools connection during {method}")
            msg = json.loads(raw)
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result") or {})

    async def text(self) -> str:
        got = await self.call("Runtime.evaluate", expression=TEXT_JS, returnByValue=True)
        return str(got.get("result", {}).get("value") or "")
