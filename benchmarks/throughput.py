"""Task throughput and latency: bare Dask vs BalsamPlugin recording vs balsam-placed tasks.

    python benchmarks/throughput.py --tasks 10000 --repeat 5 --workers 4 \
        --backends sqlite,postgresql --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Configurations, all with the same number of single-thread workers, measured in interleaved
repetitions in one run (medians reported; each repetition starts one configuration later than
the one before, so none always runs first or right after PostgreSQL's busiest run):

  (a) bare ``distributed.LocalCluster``                       -- the baseline
  (b) the same cluster with ``BalsamPlugin`` recording every task and transition
  (c) ``LocalEnsembleCluster`` + ``balsam_dask.Client``: tasks placed by the plugin (cores=1)

(a) and (b) run on the same cluster (``--b-cluster same``, the default), as the target
says: in each repetition one bare LocalCluster runs (a), then has a ``BalsamPlugin``
registered (``client.register_plugin``), runs (b) and has it removed and closed (which leaves
the scheduler bare Dask: tests/integration/test_api.py), once per backend, in rotated order.
``--b-cluster own`` starts a cluster with the plugin for each (b) instead, as (c) does. Pairs
on one cluster turned out no steadier here than pairs across clusters: on one cluster,
consecutive 2,000-task runs of bare Dask vary by 8% (standard deviation) with almost no
correlation from one run to the next (0.16), so the noise is each run's, not each cluster's.
``--skip-placed --latency-samples 0`` leaves (a) and (b) alone, for many short repetitions.

Also the median submit-to-start latency of one task on an idle cluster, (c) vs (a).
Targets: b/a >= 0.95, c/a >= 0.85, as ratios of the medians. Also the median of the paired
ratios (each repetition's b or c over that repetition's a): on a machine whose speed drifts
during the run (shared hosts), pairs compare runs seconds apart; with a 95% bootstrap interval
of that median. A single 10,000-task run here varies by +-15% from one minute to the next
(bare Dask alone, back to back), so a 5% difference needs many repetitions to show: the
interval says how far the medians can be trusted. And the CPU
time all the processes of a run spend per task (client, scheduler, workers, the store's
writer until it has written the run; not PostgreSQL's server). On a 2-core machine the run
keeps both cores ~90% busy whatever its rate (Dask's loops poll), so CPU per task follows
1/rate there and is no steadier a measure than the rate. Ends with one JSON
line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import distributed
import psutil
from distributed import LocalCluster, wait


def noop(x: int) -> int:
    return x


def started_at(_: int) -> float:
    return time.time()


def cpu_seconds() -> float:
    """CPU time (user + system) of this process (client and scheduler) and every process
    under it (workers, nannies, the store's writer) so far."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # gone meanwhile
            pass
    return total


def flush_store(dask_scheduler: Any) -> None:
    plugin = dask_scheduler.plugins.get("balsam-dask")
    if plugin is not None:
        plugin.writer.flush()


async def remove_plugin(dask_scheduler: Any) -> None:
    """Unregister BalsamPlugin and close it: the scheduler is bare Dask again."""
    await dask_scheduler.plugins.pop("balsam-dask").close()


def open_cluster(stack: ExitStack, name: str, url: str | None, workers: int, workdir: str) -> distributed.Client:
    """A client of a new cluster for configuration ``name``: bare (a), bare with the plugin
    from the start (b, --b-cluster own), or a LocalEnsembleCluster (c). Both close with ``stack``."""
    from balsam_dask import BalsamPlugin, Client, LocalEnsembleCluster

    if name.startswith("c"):
        cl: Any = stack.enter_context(LocalEnsembleCluster(nodes=workers, cores_per_node=1, store=url, workdir=workdir))
        client: distributed.Client = stack.enter_context(Client(cl))
    else:
        kw: dict[str, Any] = {"scheduler_kwargs": {"plugins": [BalsamPlugin(url)]}} if name.startswith("b") else {}
        cl = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None, **kw))
        client = stack.enter_context(distributed.Client(cl))
    client.wait_for_workers(workers)
    return client


def rate(client: distributed.Client, n: int, balsam: bool) -> tuple[float, float]:
    """Tasks per second, and CPU microseconds per task of all the run's processes (the
    store's writer included: its CPU is read once it has written the run, untimed)."""
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    if balsam:
        futures = client.map(noop, range(n), pure=False, cores=1, durable=True)
    else:
        futures = client.map(noop, range(n), pure=False)
    wait(futures)
    dt = time.perf_counter() - t0
    client.run_on_scheduler(flush_store)
    cpu = cpu_seconds() - c0
    del futures
    return n / dt, cpu / n * 1e6


def latency(client: distributed.Client, samples: int, balsam: bool) -> float:
    out = []
    for i in range(samples):
        t0 = time.time()
        f = client.submit(started_at, i, pure=False, **({"cores": 1} if balsam else {}))
        out.append(f.result() - t0)
        del f
        time.sleep(0.05)
    return statistics.median(out)


def rotated(configs: list[str], rep: int) -> list[str]:
    """The configurations in repetition ``rep``'s order: each repetition starts one later."""
    k = rep % len(configs)
    return configs[k:] + configs[:k]


def interval(values: list[float], level: float = 0.95, resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap interval of the median of ``values`` (percentile method, fixed seed)."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return meds[int((1 - level) / 2 * resamples)], meds[int((1 + level) / 2 * resamples) - 1]


def pg_schema_url(base: str) -> tuple[str, str]:
    import psycopg
    from sqlalchemy.engine import make_url

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    u = make_url(base)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def drop_schema(base: str, schema: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(base)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database, autocommit=True) as c:
        c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum} (for example 2000)")
        return value

    return parse


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=count(1), default=10_000)
    p.add_argument("--repeat", type=count(1), default=9)
    p.add_argument("--workers", type=count(1), default=4)
    p.add_argument("--latency-samples", type=count(0), default=30, help="0: no latency figures")
    p.add_argument("--skip-placed", action="store_true", help="measure (a) and (b) only")
    p.add_argument(
        "--b-cluster",
        choices=("same", "own"),
        default="same",
        help="(b) on (a)'s cluster, plugin registered and removed (same), or on a cluster of its own",
    )
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--workdir", help="where the SQLite stores go (default: a new temporary directory)")
    p.add_argument(
        "--pg-url", default=os.environ.get("BALSAM_DASK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args(argv)
    from balsam_dask import BalsamPlugin

    backends = [b for b in args.backends.split(",") if b]
    tmp = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bd-throughput-")
    os.makedirs(tmp, exist_ok=True)
    os.chdir(tmp)
    where = "(a)'s cluster" if args.b_cluster == "same" else "its own cluster"
    print(f"# {args.tasks} no-op tasks, {args.workers} single-thread workers, {args.repeat} interleaved repetitions,"
          f" (b) on {where}")  # fmt: skip
    print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    kinds = ("b",) if args.skip_placed else ("b", "c")
    configs = ["a"] + [f"{x}_{b}" for b in backends for x in kinds]
    bs = tuple(c for c in configs if c.startswith("b"))
    # what runs on one cluster: (a) and, on the same cluster, every (b); or each on its own
    units = [("a", *bs) if args.b_cluster == "same" else ("a",)] + [
        (c,) for c in configs[1:] if args.b_cluster == "own" or c not in bs
    ]
    urls: dict[str, str] = {}
    schemas: list[str] = []
    for name in configs[1:]:
        if name.endswith("sqlite"):
            urls[name] = f"sqlite:///{tmp}/{name}.db"
        else:
            urls[name], schema = pg_schema_url(args.pg_url)
            schemas.append(schema)
    rates: dict[str, list[float]] = {k: [] for k in configs}
    cpus: dict[str, list[float]] = {k: [] for k in configs}
    lats: dict[str, list[float]] = {k: [] for k in configs}
    try:
        for rep in range(args.repeat):
            # one cluster at a time: idle worker processes of other clusters would steal CPU
            for unit in rotated(units, rep):
                with ExitStack() as stack:
                    balsam = unit[0].startswith("c")
                    client = open_cluster(stack, unit[0], urls.get(unit[0]), args.workers, tmp)
                    for name in rotated(list(unit), rep):
                        late = name.startswith("b") and unit[0] == "a"  # --b-cluster same
                        if late:
                            client.register_plugin(BalsamPlugin(urls[name]))
                        rate(client, min(1000, args.tasks), balsam)  # warm up
                        r, cpu = rate(client, args.tasks, balsam)
                        rates[name].append(r)
                        cpus[name].append(cpu)
                        if args.latency_samples > 0 and (name == "a" or balsam):
                            lats[name].append(latency(client, args.latency_samples, balsam))
                        if late:
                            client.run_on_scheduler(remove_plugin)
            shown = [f"{k}={v[-1]:.0f}/s ({cpus[k][-1]:.0f} us CPU)" for k, v in rates.items()]
            print(f"rep {rep + 1}: " + ", ".join(shown), flush=True)
    finally:
        for schema in schemas:
            drop_schema(args.pg_url, schema)
    figures: dict[str, float] = {}
    for name, values in rates.items():
        figures[f"{name}_tasks_per_s"] = round(statistics.median(values), 1)
    for name, values in cpus.items():
        figures[f"{name}_cpu_us_per_task"] = round(statistics.median(values), 1)
    a = figures["a_tasks_per_s"]
    if lats["a"]:
        figures["latency_bare_ms"] = round(statistics.median(lats["a"]) * 1000, 2)
    for backend in backends:
        for x in kinds:
            figures[f"ratio_{x}_over_a_{backend}"] = round(figures[f"{x}_{backend}_tasks_per_s"] / a, 3)
        if lats.get(f"c_{backend}"):
            figures[f"latency_balsam_{backend}_ms"] = round(statistics.median(lats[f"c_{backend}"]) * 1000, 2)
        for x in kinds:
            pairs = [v / ra for v, ra in zip(rates[f"{x}_{backend}"], rates["a"], strict=True)]
            figures[f"paired_{x}_over_a_{backend}"] = round(statistics.median(pairs), 3)
            low, high = interval(pairs)
            figures[f"paired_{x}_over_a_{backend}_ci95_low"] = round(low, 3)
            figures[f"paired_{x}_over_a_{backend}_ci95_high"] = round(high, 3)
            extra = [v - ca for v, ca in zip(cpus[f"{x}_{backend}"], cpus["a"], strict=True)]
            figures[f"paired_{x}_extra_cpu_us_per_task_{backend}"] = round(statistics.median(extra), 1)
    print(
        "# medians (paired_*: median of each repetition's ratio to its own a, *_ci95_*: its 95% bootstrap interval);"
        " targets: b/a >= 0.95, c/a >= 0.85"
    )
    for k, v in figures.items():
        print(f"{k:32s} {v}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
