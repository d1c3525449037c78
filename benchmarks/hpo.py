"""Asynchronous hyperparameter optimization of neural networks (issue #22's first case study):
ASHA over sklearn ``MLPClassifier`` on the digits data set, run three ways in one run.

    python benchmarks/hpo.py --trials 24 --min-epochs 1 --max-epochs 27 --eta 3 --nodes 1 --cores-per-node 2

A starting point for your own search: the search (hpo_search.py, pure), the trial
(hpo_trial.py) and the three ways to run it (hpo_modes.py) are each short.

The search is asynchronous successive halving (hpo_search.py): a trial trains on through its
rungs of epochs and reports its validation accuracy at each; one not among the best of its rung
is stopped, that is its task killed, and may be resumed later from its checkpoint by a new task
(a promotion); a free core takes a promotion, else a new configuration. So tasks are created
while the search runs, from results, and trials are killed. Every mode runs the same
configurations (``--seed``) and budgets; a trial gets 1, 2 or 4 cores by its size (at most a
node's), and its BLAS and OpenMP pools as many threads (ours sizes them for a task's cores;
on bare Dask the trial does it with threadpoolctl). Trials report and checkpoint in files of
the run's directory (hpo_trial.py).

Modes, each in a fresh process, one at a time, rotated in each repetition (``--repeat``):

  futures  ``balsam_dask.Client`` on ``LocalEnsembleCluster(nodes, cores_per_node)`` (a fresh SQLite
           store): each trial a ``client.submit(train, job, cores=c)``; a stopped trial is killed
           with ``client.kill``
  serve    database tasks: the search adds each trial to the store (``Store.add_tasks``, a Python
           function row ``benchmarks.hpo_trial:train``) while ``balsam-dask serve --local`` runs
           them, and kills with ``Store.kill_tasks`` (what ``balsam-dask kill`` does)
  dask     bare ``distributed.LocalCluster(nodes, threads_per_worker=cores_per_node)`` with a
           ``cores`` resource; a stopped trial's future is cancelled

A trial runs in a worker's thread, as a Dask task does. No kill stops a thread, so once its task
is killed (or its future cancelled) the search leaves the trial a stop file it looks for after
every epoch, and counts it as running until it has returned. ``--isolate`` runs ours in a process
of its own per trial (``isolate=True``; a serve row gets a ``timeout``, which does the same),
which the kill stops; each trial then pays a Python start and the import of scikit-learn.

With ``--site DIR`` (``balsam-dask site init``) futures and serve run on the site's cluster, e.g.
a Slurm machine, and store, with its nodes' cores: ``--workdir`` must then be on a file system
the nodes share, and the nodes must find the repository (PYTHONPATH, which batch jobs inherit).

Figures per mode: the search's wall time, from a cluster whose workers have imported
scikit-learn (a warm-up) to the last trial's end; time to reach ``--target`` validation accuracy
(None if never); the best accuracy; trial tasks per hour; tasks FINISHED / KILLED / FAILED;
promotions (tasks that resume a paused configuration); kills asked, and the median seconds from
the search's decision to the task's KILLED event (bare Dask: to the trial's return).
Utilization is busy core-seconds over allocated core-seconds, from the first trial's start to
the last one's end: ours from the store (each task's RUNNING to its next event, times its cores;
the allocations of the scheduler that ran them, times their nodes' cores); bare Dask from the
trials' own start and end lines, over all its cores. Medians over repetitions; ratios ours/dask.
Ends with one JSON line of figures.
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
from typing import Any

from hpo_modes import MODES, Search, dask_mode, futures_mode, serve_mode
from hpo_search import rungs
from serve_throughput import environ
from throughput import count, rotated

#: Options a mode's process is given again.
SIZES = ("isolate", "trials", "min_epochs", "max_epochs", "eta", "target", "nodes", "cores_per_node", "in_flight",
         "seed", "site")  # fmt: skip
#: Figures compared as ours / dask.
COMPARED = ("wall_s", "time_to_target_s", "trials_per_hour", "utilization")


def modes(text: str) -> list[str]:
    """An argparse type: a comma-separated list of modes."""
    names = [s for s in text.split(",") if s]
    if not names or any(s not in MODES for s in names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of {', '.join(MODES)} (for example futures,dask)")
    return list(dict.fromkeys(names))


def accuracy(text: str) -> float:
    """An argparse type: a validation accuracy in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an accuracy in (0, 1] (for example 0.95)")
    return value


# ---------------------------------------------------------------- modes (each in its own process)
def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    runner = {"futures": futures_mode, "serve": serve_mode, "dask": dask_mode}[mode]
    return dict(runner(args, work, lambda backend, cores, own: Search(args, work / "trials", backend, cores, own)))


def run_child(mode: str, d: Path, name: str, argv: list[str]) -> dict[str, Any]:
    """One mode in a fresh process; its figures."""
    done = subprocess.run([sys.executable, __file__, *argv, "--child", mode, "--workdir", str(d / name)],
                          env=environ(), capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} run exited {done.returncode}: {done.stderr.strip()[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians of every figure (None when a repetition has None), then ratios ours/dask."""
    out: dict[str, Any] = {}
    for mode, values in runs.items():
        for figure in values[0]:
            got = [v[figure] for v in values]
            out[f"{mode}_{figure}"] = None if None in got else round(statistics.median(got), 4)
    for ours in ("futures", "serve"):
        for figure in COMPARED:
            a, b = out.get(f"{ours}_{figure}"), out.get(f"dask_{figure}")
            if a is not None and b:
                out[f"ratio_{ours}_over_dask_{figure}"] = round(a / b, 3)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=count(1), default=24, help="configurations the search samples")
    p.add_argument("--min-epochs", type=count(1), default=1, help="epochs of the first rung")
    p.add_argument("--max-epochs", type=count(1), default=27, help="epochs of the last rung")
    p.add_argument("--eta", type=count(2), default=3, help="ASHA's reduction factor")
    p.add_argument("--target", type=accuracy, default=0.95, help="validation accuracy to reach")
    p.add_argument("--nodes", type=count(1), default=1, help="emulated nodes (local runs)")
    p.add_argument("--cores-per-node", type=count(1), default=2, help="cores of each node (a trial gets up to 4)")
    p.add_argument("--in-flight", type=count(1), help="trials submitted at once (default: nodes x cores per node)")
    p.add_argument("--isolate", action="store_true", help="ours: each trial in a process of its own")
    p.add_argument("--seed", type=int, default=0, help="the configurations' seed (the same for every mode)")
    p.add_argument("--repeat", type=count(1), default=1)
    p.add_argument("--modes", type=modes, default=list(MODES), help=f"which of {','.join(MODES)}")
    p.add_argument("--site", help="a site directory: futures and serve run on its cluster and store")
    p.add_argument("--workdir", help="where stores, reports and checkpoints go (default: a new temporary directory)")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.min_epochs > args.max_epochs:
        p.error(f"--min-epochs {args.min_epochs} is more than --max-epochs {args.max_epochs}: give at most as many, "
                "e.g. --min-epochs 1 --max-epochs 27")  # fmt: skip
    if args.site and not args.child:
        if "dask" in args.modes:
            p.error("--site runs ours only: give --modes futures,serve with --site")
        from balsam_dask.deploy.site import load_site
        from balsam_dask.errors import InvalidSiteConfig

        try:
            load_site(args.site)
        except InvalidSiteConfig as e:
            p.error(f"--site: {e}")
    if args.child:
        figures = run_mode(args.child, args)
        print(json.dumps(figures))
        return figures
    d = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bd-hpo-"))
    d.mkdir(parents=True, exist_ok=True)
    given = {k: v for k, v in vars(args).items() if k in SIZES and v not in (None, False)}
    child_argv = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in given.items()]
    where = f"site {args.site}" if args.site else f"{args.nodes} node(s) x {args.cores_per_node} cores"
    budgets = rungs(args.min_epochs, args.max_epochs, args.eta)
    print(f"# ASHA over {args.trials} MLP configurations on digits, rungs {budgets} epochs,"
          f" target {args.target}, {where}, {args.repeat}"
          f" rotated repetition(s) of {', '.join(args.modes)}, in {d}")  # fmt: skip
    print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    for rep in range(args.repeat):
        for mode in rotated(list(args.modes), rep):
            runs[mode].append(run_child(mode, d, f"{mode}_{rep}", child_argv))
        shown = [f"{m} {v[-1]['wall_s']:.1f}s best={v[-1]['best_accuracy']:.3f}" for m, v in runs.items()]
        print(f"rep {rep + 1}: " + ", ".join(shown), flush=True)
    out = summarize(runs)
    print("# medians over repetitions; ratio_*: ours / dask of the medians")
    for k, v in out.items():
        print(f"{k:45s} {v}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
