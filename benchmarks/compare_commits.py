"""Two commits of balsam_dask in one interleaved run of ``benchmarks/throughput.py``.

    python benchmarks/compare_commits.py OLD_REV NEW_REV --rounds 6 -- --tasks 2000 --backends sqlite

Each round runs throughput.py (``--repeat 1``, the arguments after ``--``) once from each
commit's tree (git worktrees in a temporary directory), in alternating order, each in a fresh
process with its tree first on ``sys.path``; then it prints, for (b) recorded and (c) placed,
the median of the paired new/old ratios of tasks/s (each round's new over that round's old)
and of each commit's ratio to its own bare Dask run, and ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("a_tasks_per_s", "b_sqlite_tasks_per_s", "c_sqlite_tasks_per_s")


def run(tree: Path, extra: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / "throughput.py"), "--repeat", "1", *extra],
                         cwd=tree, env=env, capture_output=True, text=True, timeout=3600)  # fmt: skip
    if out.returncode:
        raise SystemExit(f"throughput.py in {tree} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("extra", nargs="*", help="arguments for throughput.py (after --)")
    args = p.parse_args()
    extra = args.extra or ["--tasks", "2000", "--backends", "sqlite", "--latency-samples", "0"]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for label, rev in (("old", args.old), ("new", args.new)):
            trees[label] = Path(tmp) / label
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(trees[label]), rev],
                           check=True, capture_output=True)  # fmt: skip
        results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        try:
            for i in range(args.rounds):
                for label in ("old", "new") if i % 2 == 0 else ("new", "old"):
                    results[label].append(run(trees[label], extra))
                    got = results[label][-1]
                    print(label, i, {k: got.get(k) for k in KEYS}, flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    figures: dict[str, float] = {}
    for x in ("b", "c"):
        key = f"{x}_sqlite_tasks_per_s"
        pairs = [n[key] / o[key] for o, n in zip(results["old"], results["new"], strict=True) if key in o and key in n]
        if pairs:
            figures[f"paired_new_over_old_{x}"] = round(statistics.median(pairs), 3)
        for label in ("old", "new"):
            own = [r[key] / r["a_tasks_per_s"] for r in results[label] if key in r]
            if own:
                figures[f"{label}_{x}_over_bare"] = round(statistics.median(own), 3)
    figures["rounds"] = args.rounds
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
