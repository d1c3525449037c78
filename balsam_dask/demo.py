"""The README's main job: a demo workload on LocalEnsembleCluster with the embedded store.

    python -m balsam_dask.demo [--nodes 4] [--cores-per-node 4] [--workdir demo-run]

A hyperparameter sweep of real model fits (scikit-learn on the bundled digits data set:
ridge classifiers, SVMs and random forests; the forests use 2 cores each) runs beside
unmodified executables of differing core counts (``xz -T N`` compressing generated data
with 1, 2 or 4 threads), all packed onto emulated 4-core nodes. A progress line shows what
runs; the closing summary is read back from the provenance store.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def fit_model(kind: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train on the digits data set and return the held-out accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    from balsam_dask import current_task

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed)
    ctx = current_task()
    cores = ctx.cores if ctx else 1
    model: Any
    if kind == "ridge":
        model = RidgeClassifier(alpha=params["alpha"])
    elif kind == "svm":
        model = SVC(C=params["C"], gamma=params["gamma"])
    else:
        model = RandomForestClassifier(n_estimators=params["trees"], max_depth=params["depth"], n_jobs=cores,
                                       random_state=seed)  # fmt: skip
    t0 = time.perf_counter()
    model.fit(xtr, ytr)
    return {"kind": kind, "params": params, "accuracy": float(model.score(xte, yte)),
            "fit_seconds": time.perf_counter() - t0, "cores": cores}  # fmt: skip


def sweep() -> list[tuple[str, dict[str, Any], int]]:
    grid: list[tuple[str, dict[str, Any], int]] = []
    for alpha in (0.01, 0.1, 1.0, 10.0):
        grid.append(("ridge", {"alpha": alpha}, 1))
    for c in (0.5, 2.0, 8.0):
        for gamma in (0.0005, 0.001, 0.005):
            grid.append(("svm", {"C": c, "gamma": gamma}, 1))
    for trees in (50, 150):
        for depth in (8, None):
            grid.append(("forest", {"trees": trees, "depth": depth}, 2))
    return grid


def make_inputs(workdir: Path, n: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    words = [f"w{i:04d}" for i in range(5000)]
    paths = []
    for i in range(n):
        p = workdir / "inputs" / f"data-{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(" ".join(rng.choice(words) for _ in range(400_000 * (1 + i % 3))))
        paths.append(p)
    return paths


def progress(store: Any, total: int, t0: float) -> str:
    counts = store.summary()
    done = counts.get("FINISHED", 0) + counts.get("FAILED", 0)
    bar = "#" * int(30 * done / max(total, 1))
    running = counts.get("RUNNING", 0)
    waiting = sum(counts.get(s, 0) for s in ("CREATED", "AWAITING_PARENTS", "READY", "RESTART_READY"))
    return f"[{bar:<30}] {done}/{total} done, {running} running, {waiting} waiting  {time.time() - t0:5.1f}s"


def run(nodes: int, cores_per_node: int, workdir: Path) -> int:
    from distributed import as_completed

    from balsam_dask import Client, LocalEnsembleCluster, Store

    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    store_path = workdir / "balsam.db"
    if shutil.which("xz") is None:
        print("demo: the `xz` executable is missing (apt-get install xz-utils)", file=sys.stderr)
        return 1
    inputs = make_inputs(workdir, 6, seed=1)
    print(f"demo: {nodes} emulated nodes x {cores_per_node} cores; store sqlite:///{store_path}")
    with LocalEnsembleCluster(nodes=nodes, cores_per_node=cores_per_node, store=str(store_path),
                              workdir=workdir) as cluster, Client(cluster) as client:  # fmt: skip
        futures = []
        for kind, params, cores in sweep():
            # a forest's joblib threads in a process that runs other fits race on the process's
            # warning filters (scikit-learn resets them in each of its threads): a process of its own
            futures.append(client.submit(fit_model, kind, params, 0, cores=cores, name=f"fit-{kind}",
                                         tags={"demo": "sweep", "model": kind}, pure=False,
                                         isolate=kind == "forest"))  # fmt: skip
        for i, path in enumerate(inputs):
            threads = (1, 2, 4)[i % 3]
            futures.append(client.submit_app(
                "xz -T {threads} -6 -k -f {path}", {"threads": threads, "path": str(path)}, cores=threads,
                name=f"xz-{threads}t", tags={"demo": "apps", "threads": threads}, timeout=600,
            ))  # fmt: skip
        total = len(futures)
        store = Store(cluster.store_url)
        t0 = time.time()
        last = 0.0
        results = []
        for fut in as_completed(futures):
            results.append(fut.result())
            if time.time() - last > 0.5:
                client.flush()
                print("\r" + progress(store, total, t0), end="", flush=True)
                last = time.time()
        client.flush()
        print("\r" + progress(store, total, t0))
        summary(store, results)
        store.close()
    print(f"\nexplore the provenance: balsam-dask --store {store_path} ls --tag demo=sweep")
    return 0


def summary(store: Any, results: list[Any]) -> None:
    print("\n== tasks by state (from the store)")
    for state, n in store.summary().items():
        print(f"  {state:10s} {n}")
    tasks = store.tasks(limit=None)
    kinds = Counter(t.kind for t in tasks)
    print("== tasks by kind: " + ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())))
    busy = 0.0
    first, last = float("inf"), 0.0
    per_name: dict[str, list[float]] = {}
    for t in tasks:
        hist = store.history(t.id)
        start = next((e.ts for e in hist if e.to_state == "RUNNING"), None)
        end = next((e.ts for e in hist if e.to_state == "FINISHED"), None)
        if start is None or end is None:
            continue
        busy += (end - start) * t.cores
        first, last = min(first, start), max(last, end)
        per_name.setdefault(t.name or t.kind, []).append(end - start)
    print("== run time by task name (median s)")
    for name, ds in sorted(per_name.items()):
        ds.sort()
        print(f"  {name:14s} n={len(ds):2d}  {ds[len(ds) // 2]:.2f}s")
    fits = sorted((r for r in results if isinstance(r, dict)), key=lambda r: -r["accuracy"])
    print("== best models")
    for r in fits[:3]:
        print(f"  {r['kind']:7s} {r['params']}  accuracy={r['accuracy']:.4f}  ({r['cores']} core(s))")
    if last > first:
        print(f"== core-seconds busy / wall: {busy:.1f} / {last - first:.1f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="balsam_dask demo workload")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--cores-per-node", type=int, default=4)
    p.add_argument("--workdir", type=Path, default=Path("demo-run"))
    args = p.parse_args(argv)
    return run(args.nodes, args.cores_per_node, args.workdir.absolute())


if __name__ == "__main__":
    sys.exit(main())
