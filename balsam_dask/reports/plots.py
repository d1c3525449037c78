"""A report's plots as PNG images (matplotlib's Agg renderer, no display and no pyplot state)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from balsam_dask.reports.frames import Report

COLORS = {"finished": "#2e7d32", "failed": "#c62828", "killed": "#757575", "busy": "#1565c0", "held": "#90a4ae",
          "queued": "#ffcc80", "running": "#1565c0"}  # fmt: skip
DPI = 100


def _scale(r: Report) -> tuple[float, str]:
    """Seconds per unit of the time axis (seconds, minutes or hours since the window's start)
    and its label."""
    start, span = r.summary["start"], r.summary["end"] - r.summary["start"]
    unit, name = (3600.0, "hours") if span > 3 * 3600 else (60.0, "minutes") if span > 180 else (1.0, "seconds")
    when = pd.Timestamp(start, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
    return unit, f"{name} since {when}"


def _x(r: Report, index: pd.Index) -> list[float]:
    unit, _ = _scale(r)
    return [(t.timestamp() - r.summary["start"]) / unit for t in index]


def throughput_axes(ax: Any, r: Report) -> None:
    df = r.throughput
    x = _x(r, df.index)
    step = r.summary["interval_s"] / _scale(r)[0]
    bottom = [0.0] * len(x)
    for col in ("finished", "failed", "killed"):
        ax.bar(x, df[col], width=step * 0.9, bottom=bottom, align="edge", color=COLORS[col], label=col)
        bottom = [b + v for b, v in zip(bottom, df[col], strict=True)]
    ax.set_xlabel(_scale(r)[1])
    ax.set_ylabel(f"tasks per {r.summary['interval_s']:g} s")
    ax.set_title("Throughput")
    twin = ax.twinx()
    twin.plot([0.0] + [v + step for v in x], [0, *df["cumulative_ended"]], color="black", linewidth=1.2)
    twin.set_ylabel("cumulative tasks ended")
    twin.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")


def utilization_axes(ax: Any, r: Report) -> None:
    df = r.utilization
    x = _x(r, df.index)
    what = "nodes" if df["cores"].isna().all() else "cores"
    x = [*x, (r.summary["end"] - r.summary["start"]) / _scale(r)[0]]  # the last interval's end
    ax.step(x, [*df[f"busy_{what}"], df[f"busy_{what}"].iloc[-1]], where="post", color=COLORS["busy"],
            label=f"busy {what}")  # fmt: skip
    if not df[what].isna().all():
        ax.step(x, [*df[what], df[what].iloc[-1]], where="post", color=COLORS["held"], linestyle="--",
                label=f"allocated {what}")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.set_xlabel(_scale(r)[1])
    ax.set_ylabel(what)
    share = r.summary["utilization" if what == "cores" else "node_utilization"]
    ax.set_title("Utilization" + ("" if math.isnan(share) else f" ({share:.0%} of the {what} allocated)"))
    ax.legend(loc="lower right", fontsize="small")


def delays_axes(ax: Any, r: Report) -> None:
    df = r.delays
    labels = [_bin_label(lo, hi) for lo, hi in zip(df["low"], df["high"], strict=True)]
    ax.bar(range(len(df)), df["tasks"], color=COLORS["busy"])
    ax.set_xticks(range(len(df)), labels, rotation=45, ha="right", fontsize="small")
    ax.set_ylabel("runs")
    d = r.summary["delay_s"]
    ax.set_title("Run delay (ready -> running)" + ("" if math.isnan(d["median"]) else
                 f": median {_seconds(d['median'])}, p90 {_seconds(d['p90'])}"))  # fmt: skip


def allocations_axes(ax: Any, r: Report) -> None:
    df = r.allocations
    unit, label = _scale(r)
    start, end = r.summary["start"], r.summary["end"]

    def at(t: Any) -> float | None:
        return None if pd.isna(t) else (t.timestamp() - start) / unit

    for i, (_, a) in enumerate(df.iterrows()):
        sub, began, ended = at(a["submitted"]), at(a["started"]), at(a["ended"])
        if sub is not None:
            until = began if began is not None else ended if ended is not None else (end - start) / unit
            ax.barh(i, until - sub, left=sub, color=COLORS["queued"], height=0.6)
        if began is not None and ended is not None:
            ax.barh(i, ended - began, left=began, color=COLORS["running"], height=0.6)
        left = began if began is not None else sub if sub is not None else 0.0
        nodes = f"{a['nodes']} node{'s' if a['nodes'] != 1 else ''}"
        ax.text(left, i, f" {nodes}, {a['node_hours']:.3g} node-h", va="center", fontsize="small", color="white")
    names = [str(j) if isinstance(j, str) and j else str(i) for i, j in zip(df.index, df["job_id"], strict=True)]
    ax.set_yticks(range(len(df)), names, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.set_title(f"Allocations (queued, running): {r.summary['node_hours']:.3g} node-hours")


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if abs(s) < 1 else f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _bin_label(lo: float, hi: float) -> str:
    if math.isinf(lo):
        return f"< {_seconds(hi)}"
    if math.isinf(hi):
        return f">= {_seconds(lo)}"
    return f"{_seconds(lo)}-{_seconds(hi)}"


PANELS = {"throughput": throughput_axes, "utilization": utilization_axes, "delays": delays_axes,
          "allocations": allocations_axes}  # fmt: skip


def figure(r: Report, name: str) -> Figure:
    """One plot of the report (a name of ``PANELS``)."""
    fig = Figure(figsize=(8, 4), dpi=DPI, layout="constrained")
    PANELS[name](fig.add_subplot(), r)
    return fig


def overview(r: Report) -> Figure:
    """The four plots on one figure."""
    fig = Figure(figsize=(14, 8), dpi=DPI, layout="constrained")
    for i, draw in enumerate(PANELS.values()):
        draw(fig.add_subplot(2, 2, i + 1), r)
    fig.suptitle(f"balsam-dask report: {r.summary['tasks']} tasks, {r.summary['finished']} finished, "
                 f"{r.summary['failed']} failed")  # fmt: skip
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def pngs(r: Report) -> dict[str, bytes]:
    """Every plot (and the overview) as PNG bytes, by name."""
    out = {name: png(figure(r, name)) for name in PANELS}
    out["overview"] = png(overview(r))
    return out


def write_pngs(r: Report, directory: str | Path) -> list[Path]:
    """Write ``<name>.png`` for every plot into ``directory`` (made if missing); their paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in pngs(r).items():
        path = d / f"{name}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths
