"""App-task throughput: ``/bin/true`` apps on a LocalEnsembleCluster, tasks per second.

    python benchmarks/app_throughput.py --tasks 300 --repeat 3 --nodes 2 --cores 2

Each repetition submits ``--tasks`` apps at once (after a warm-up of 20) and times until all
have finished; prints each rate and the median, then one JSON line. To compare two versions
of balsam_dask, run it once per version with PYTHONPATH set to each, alternately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from balsam_dask import Client, LocalEnsembleCluster


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        with LocalEnsembleCluster(nodes=args.nodes, cores_per_node=args.cores, workdir=tmp) as cluster:
            with Client(cluster) as client:
                client.gather([client.submit_app(["/bin/true"]) for _ in range(20)])
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    client.gather([client.submit_app(["/bin/true"]) for _ in range(args.tasks)])
                    rates.append(args.tasks / (time.perf_counter() - t0))
                    print(f"{rates[-1]:.1f} tasks/s", flush=True)
    print(json.dumps({"tasks": args.tasks, "rates": [round(r, 1) for r in rates], "median": statistics.median(rates)}))


if __name__ == "__main__":
    main()
