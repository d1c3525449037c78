"""A report as one self-contained HTML page: the summary, the plots (embedded PNGs) and every
table. It loads nothing from anywhere: it opens offline."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from balsam_dask.reports.frames import Report

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
img { max-width: 100%; } .note { color: #a15c00; }
"""
#: Rows a table shows (the DataFrames have them all).
MAX_ROWS = 500
#: The tables shown with a plot (of the same name) above them.
PLOTTED = ("throughput", "utilization", "delays", "allocations")
TITLES = {"states": "Tasks by state", "throughput": "Throughput", "utilization": "Utilization",
          "delays": "Run delays (ready -> running)", "durations": "Run durations by name",
          "attempts": "Attempts and retries", "allocations": "Allocations", "errors": "Errors"}  # fmt: skip


def number_text(v: Any) -> str:
    """A table cell: floats to 4 significant digits, NaN as ``-``."""
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _table(df: pd.DataFrame) -> str:
    """The table, its first ``MAX_ROWS`` rows (and how many there are)."""
    shown = str(df.head(MAX_ROWS).to_html(float_format=number_text, na_rep="-", border=0, escape=True))
    return shown if len(df) <= MAX_ROWS else f"{shown}<p>the first {MAX_ROWS} of {len(df)} rows</p>"


def _summary(r: Report) -> str:
    s, num = r.summary, number_text
    when = [pd.Timestamp(s[k], unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC") for k in ("start", "end")]
    d = s["delay_s"]
    rows = [
        ("store", s["store"]), ("window", f"{when[0]} to {when[1]} (interval {s['interval_s']:g} s)"),
        ("tasks", s["tasks"]), ("finished / failed / killed", f"{s['finished']} / {s['failed']} / {s['killed']}"),
        ("runs (attempts) / retries", f"{s['runs']} / {s['retries']}"),
        ("busy / allocated core-hours", f"{num(s['busy_core_hours'])} / {num(s['allocated_core_hours'])}"),
        ("utilization (cores / GPUs / nodes)",
         " / ".join("-" if math.isnan(v) else f"{v:.1%}" for v in (s["utilization"], s["gpu_utilization"],
                                                                    s["node_utilization"]))),
        ("node-hours allocated", num(s["node_hours"])),
        ("run delay median / p90 / max (s)", f"{num(d['median'])} / {num(d['p90'])} / {num(d['max'])}"),
    ]  # fmt: skip
    body = "".join(f'<tr><th>{html.escape(k)}</th><td class="text">{html.escape(str(v))}</td></tr>' for k, v in rows)
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in s["notes"])
    return f"<table>{body}</table>{notes}"


def render(r: Report, images: dict[str, bytes]) -> str:
    """The page, with ``images`` (PNG bytes by plot name, e.g. ``plots.pngs(r)``) embedded."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>balsam-dask report</title>"
             f"<style>{STYLE}</style></head><body><h1>balsam-dask report</h1>", _summary(r)]  # fmt: skip
    for name, df in r.tables().items():
        parts.append(f"<h2 id='{name}'>{html.escape(TITLES[name])}</h2>")
        if name in PLOTTED and name in images:
            parts.append(_img(images[name], name))
        parts.append(_table(df) if len(df) else "<p>none</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _img(data: bytes, name: str) -> str:
    return f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}'>"


def write_html(r: Report, path: str | Path, images: dict[str, bytes] | None = None) -> Path:
    """Write the page to ``path`` (plots made with ``plots.pngs`` unless given); its path."""
    if images is None:
        from balsam_dask.reports.plots import pngs

        images = pngs(r)
    out = Path(path)
    out.write_text(render(r, images), encoding="utf-8")
    return out
