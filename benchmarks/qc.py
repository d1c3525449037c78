"""High-throughput single-point energies of small molecules: NWChem and PySCF through balsam_dask
(issue #22's second case study), against the same calculations run directly.

    python benchmarks/qc.py --molecules 12 --methods scf,dft --basis 6-31g --overhead-tasks 20 --repeat 3
    python benchmarks/qc.py --molecules h2o,co --slurm          # + a 2-node case on the local Slurm cluster
    python benchmarks/qc.py --site ~/sites/polaris --launcher detect --mpi-env ''   # a real cluster

Needs NWChem (``scripts/install_nwchem.sh``: Debian's, built with Open MPI) and PySCF
(``pip install -e '.[qc]'``). The calculations (``qc_chem.py``): RHF (``scf``) and PBE (``dft``)
energies in ``--basis`` with spherical functions, each run four ways: NWChem without a
launcher (a serial app), under MPI with 1 and 2 ranks (``submit_mpi`` / an app with a launcher,
by default ``openmpi:/usr/bin/mpirun``), and PySCF as a Python function.

In each of ``--repeat`` repetitions, in rotated order (the first starts with futures):

  direct   every calculation once, one after another: NWChem as ``nwchem in.nw`` or ``mpirun
           -np K nwchem in.nw``, PySCF called in this process: the reference energies and
           ``direct_total_s``.
  futures  a process with the cluster and ``balsam_dask.Client`` (``qc_runs.futures_child``):
           first ``--overhead-tasks`` 2-rank NWChem runs of the first molecule, then the mixed
           set (every calculation ``--copies`` times) at once.
  serve    a fresh store, ``balsam-dask submit --file tasks.yaml``, ``balsam-dask serve`` once
           per phase (``--tag phase=overhead``, then ``phase=mixed``).
  loop     the exact command of the futures run's first 2-rank task, ``--overhead-tasks`` times.

The default cluster is one node of this machine's 2 cores (``--nodes``, ``--cores-per-node``):
2-rank tasks then run one at a time, so the overhead phase compares like with like: per-task
overhead = (our time - the loop's) / N (futures: first submit to last result, the cluster up;
serve: the span of the phase's events, serve's start excluded; its whole command is
``serve_*_wall_s``). On a shared machine the tasks' own run times swing by more than that
difference, so the overhead phase also reports what the machinery adds per task whatever the
load, from the store: ``*_overhead_gap_ms``, the median time from one task's RUN_DONE to the
next one's RUNNING, and ``*_overhead_wrap_ms``, the median RUNNING -> RUN_DONE less the
process's own run time. The utilization of the mixed phase (busy core-seconds over what the
allocations held in its span) is ``balsam_dask.report``'s, for the phase's tasks by tag; the
spans and gaps are a small query of the events (``qc_runs.usage``).

Checks (the run fails otherwise): every balsam-run energy equals the direct run of the same
calculation within 1e-8 Eh; NWChem and PySCF agree within 1e-8 Eh (SCF) and 1e-6 Eh (DFT: the
two programs' grids differ). ``OMPI_MCA_mpi_yield_when_idle=1`` (``--mpi-env``, default) makes
idle ranks yield: on 2 shared cores busy-polling ranks made a 2-rank run 3-7 times slower.
Ends with one JSON line of figures (medians over repetitions).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import qc_chem
import qc_runs
from serve_throughput import environ
from throughput import count, rotated

TOLERANCE = {"direct": 1e-8, "scf": 1e-8, "dft": 1e-6}
DEFAULT_LAUNCHER = "openmpi:/usr/bin/mpirun"


def names(kind: str, allowed: tuple[str, ...]) -> Any:
    """An argparse type: a comma-separated subset of ``allowed`` (molecules: or how many of them)."""

    def parse(text: str) -> list[str]:
        if kind == "molecules" and text.isdigit() and 1 <= int(text) <= len(allowed):
            return list(allowed[: int(text)])
        got = [t.strip().lower() for t in text.split(",") if t.strip()]
        if not got or any(g not in allowed for g in got):
            many = " (or how many)" if kind == "molecules" else ""
            raise argparse.ArgumentTypeError(f"{text!r}: give {kind} from {','.join(allowed)}{many}, e.g. {allowed[0]}")
        return got

    return parse


def env_pairs(text: str) -> dict[str, str]:
    pairs = [p for p in text.split(",") if p]
    if not all("=" in p and p.split("=", 1)[0].isidentifier() for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE pairs, comma-separated (or ''), "
                                         "e.g. OMPI_MCA_mpi_yield_when_idle=1")  # fmt: skip
    return dict(p.split("=", 1) for p in pairs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", type=names("molecules", tuple(qc_chem.MOLECULES)), default=list(qc_chem.MOLECULES))
    p.add_argument("--methods", type=names("methods", qc_chem.METHODS), default=list(qc_chem.METHODS))
    p.add_argument("--codes", type=names("codes", ("nwchem", "pyscf")), default=["nwchem", "pyscf"])
    p.add_argument("--modes", type=names("modes", ("futures", "serve")), default=["futures", "serve"])
    p.add_argument("--basis", default="6-31g", help="a basis both NWChem and PySCF know by this name")
    p.add_argument("--copies", type=count(1), default=1, help="times each calculation is in the mixed set")
    p.add_argument("--overhead-tasks", type=count(0), default=20, help="2-rank NWChem runs (0: none)")
    p.add_argument("--repeat", type=count(1), default=3)
    p.add_argument("--nodes", type=count(1), default=1, help="emulated nodes of the local cluster")
    p.add_argument("--cores-per-node", type=count(2), default=2)
    p.add_argument("--site", metavar="DIR", help="run on this site's cluster (balsam-dask site init)")
    p.add_argument("--slurm", action="store_true", help="also a 2-node case on the local Slurm cluster")
    p.add_argument("--nwchem", default="nwchem", help="the NWChem program")
    p.add_argument("--launcher", default=DEFAULT_LAUNCHER, help="of the MPI tasks ('detect': the cluster's)")
    p.add_argument("--mpi-env", type=env_pairs, default=env_pairs("OMPI_MCA_mpi_yield_when_idle=1"))
    p.add_argument("--workdir", help="where stores, inputs and work directories go (default: a new one)")
    p.add_argument("--child", metavar="PLAN", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    if args.slurm and not os.environ.get("SLURM_CONF"):
        p.error('--slurm needs the local Slurm cluster: eval "$(scripts/slurm_local.sh env)" first')
    if args.site and args.slurm:
        p.error("give --site or --slurm, not both")
    if args.site:
        from balsam_dask.deploy.site import load_site
        from balsam_dask.errors import InvalidSpec

        try:
            site = load_site(args.site)
        except InvalidSpec as e:
            p.error(f"--site {args.site}: {e}")
    if "nwchem" in args.codes and shutil.which(args.nwchem) is None:
        p.error(f"--nwchem {args.nwchem!r} is not found: install NWChem (scripts/install_nwchem.sh) or give "
                "--codes pyscf")  # fmt: skip
    try:
        import pyscf  # noqa: F401
    except ImportError:
        p.error("PySCF is not installed: pip install -e '.[qc]'")
    if args.launcher == "detect":
        args.launcher = site.node.launcher if args.site else None
        if args.launcher is None and "serve" in args.modes and "nwchem" in args.codes:
            p.error("--launcher detect leaves serve's 1-rank NWChem tasks without a launcher (a database task is "
                    "an MPI task when it has several ranks or its app names a launcher): name one, e.g. --launcher "
                    f"{DEFAULT_LAUNCHER}, or set node.launcher in the site")  # fmt: skip
    return args


def calcs(args: argparse.Namespace, variants: tuple[str, ...]) -> list[qc_chem.Calc]:
    """The calculations of the selected codes, molecules and methods, run each of ``variants``' ways."""
    want = [v for v in variants if ("pyscf" if v == "pyscf" else "nwchem") in args.codes]
    return [qc_chem.Calc(m, meth, v) for m in args.molecules for meth in args.methods for v in want]


def direct_argv(args: argparse.Namespace, calc: qc_chem.Calc, inputs: dict[str, str]) -> list[str]:
    """How a user runs the calculation by hand: ``nwchem in.nw``, ``mpirun -np K nwchem in.nw``."""
    argv = [args.nwchem, inputs[f"{calc.molecule}-{calc.method}"]]
    if calc.variant == "serial":
        return argv
    flavour, _, program = (args.launcher or DEFAULT_LAUNCHER).partition(":")
    extra = ["--oversubscribe"] if flavour == "openmpi" else []
    return [program or "mpirun", "-np", str(calc.ranks), *extra, *argv]


def run_env(args: argparse.Namespace) -> dict[str, str]:
    """What an MPI task's launcher gets besides the task's variables (Open MPI as root)."""
    as_root = os.geteuid() == 0 and (args.launcher or DEFAULT_LAUNCHER).startswith("openmpi")
    root = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"} if as_root else {}
    return {**args.mpi_env, **root, "OMP_NUM_THREADS": "1"}


def run_direct(args: argparse.Namespace, todo: list[qc_chem.Calc], inputs: dict[str, str],
               d: Path) -> tuple[dict[str, float], float]:  # fmt: skip
    """Every calculation once, directly: energies by label, total seconds."""
    out, total = {}, 0.0
    for c in todo:
        if c.variant == "pyscf":
            t0 = time.perf_counter()
            out[c.label] = qc_chem.pyscf_energy(c.molecule, c.method, args.basis)
            total += time.perf_counter() - t0
        else:
            out[c.label], dt = qc_chem.run_direct(direct_argv(args, c, inputs), d / c.label, run_env(args))
            total += dt
    return out, total


def run_loop(command: list[str], n: int, d: Path, env: dict[str, str]) -> float:
    total = 0.0
    for i in range(n):
        total += qc_chem.run_direct(command, d / f"loop-{i}", env)[1]
    return total


def plan_for(args: argparse.Namespace, url: str, d: Path, inputs: dict[str, str], cluster: dict[str, Any],
             mixed: list[qc_chem.Calc]) -> dict[str, Any]:  # fmt: skip
    phases: dict[str, list[list[str]]] = {}
    if args.overhead_tasks and "nwchem" in args.codes and cluster["kind"] != "slurm":
        m, meth = args.molecules[0], args.methods[0]
        phases["overhead"] = [[m, meth, "mpi2", f"{m}-{meth}-mpi2.{i}"] for i in range(args.overhead_tasks)]
    phases["mixed"] = [[c.molecule, c.method, c.variant, f"{c.label}.{k}"] for k in range(args.copies) for c in mixed]
    in_slurm = cluster["kind"] == "slurm" or cluster.get("scheduler") == "slurm"
    return {"url": url, "workdir": str(d), "nwchem": args.nwchem, "launcher": args.launcher,
            "mpi_env": args.mpi_env, "basis": args.basis, "inputs": inputs, "phases": phases,
            "cluster": cluster, "slurm_nodes": in_slurm}  # fmt: skip


def site_cluster(site_dir: str) -> dict[str, Any]:
    """A site's cluster for the plan: its directory and batch system."""
    from balsam_dask.deploy.site import load_site

    return {"kind": "site", "dir": str(Path(site_dir).resolve()), "scheduler": load_site(site_dir).scheduler}


def futures(plan: dict[str, Any]) -> dict[str, Any]:
    Path(plan["workdir"]).mkdir(parents=True, exist_ok=True)
    path = Path(plan["workdir"], "plan.json")
    path.write_text(json.dumps(plan))
    done = subprocess.run([sys.executable, __file__, "--child", str(path)], env=environ(), capture_output=True,
                          text=True, cwd=plan["workdir"])  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the futures run exited {done.returncode}: {done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def deviation(got: dict[str, float], ref: dict[str, float], what: str, tol: float = TOLERANCE["direct"]) -> float:
    """The largest |energy - reference| of tasks named ``label.k`` (or ``label``); over ``tol`` fails.
    A 2-node task (``mpi2n``) is checked against the direct 2-rank run."""
    worst = 0.0
    for name, e in got.items():
        label = name.rsplit(".", 1)[0].replace("-mpi2n", "-mpi2")
        dev = abs(e - ref[label])
        if dev > tol:
            raise RuntimeError(f"{what}: {name} = {e!r} Eh, the direct run {ref[label]!r} Eh ({dev:.2e} > {tol})")
        worst = max(worst, dev)
    return worst


def figures_of(runs: dict[str, list[float]], n_mixed: int, n_over: int) -> dict[str, float]:
    """Medians, the per-task overheads against the loop, the ratios of the medians and the
    paired ratios (the median of each repetition's ratio: steadier when the machine's speed drifts)."""
    med = {k: statistics.median(v) for k, v in runs.items()}
    out: dict[str, float] = {"mixed_tasks": n_mixed, "overhead_tasks": n_over}
    out.update({k: round(v, 3) for k, v in med.items()})

    def ratios(name: str, key: str, base: str) -> None:
        out[f"ratio_{name}"] = round(med[key] / med[base], 3)
        out[f"paired_{name}"] = round(statistics.median(a / b for a, b in zip(runs[key], runs[base], strict=True)), 3)

    for unit, key in (("futures", "futures_overhead_s"), ("serve", "serve_overhead_span_s")):
        if n_over and key in med and "loop_overhead_s" in med:
            out[f"{unit}_per_task_overhead_ms"] = round((med[key] - med["loop_overhead_s"]) / n_over * 1000, 1)
            ratios(f"{unit}_over_loop", key, "loop_overhead_s")
    for unit, key in (("futures", "futures_mixed_s"), ("serve", "serve_mixed_span_s")):
        if key in med:
            ratios(f"{unit}_mixed_over_direct", key, "direct_total_s")
    return out


def slurm_case(args: argparse.Namespace, d: Path, inputs: dict[str, str], ref: dict[str, float]) -> dict[str, float]:
    """The 2-node case: NWChem on 2 nodes x 1 rank of the local Slurm cluster (4 virtual nodes of
    4 cores on this host), mixed with the serial and PySCF tasks, through the futures API."""
    todo = calcs(args, ("serial", "mpi2n", "pyscf"))
    url = f"sqlite:///{d}/slurm.db"
    cluster = {"kind": "slurm", "nodes": 2, "cores": 4}
    plan = plan_for(args, url, d / "slurm", inputs, cluster, todo)
    seconds = futures(plan)["seconds"]["mixed"]
    u = qc_runs.usage(url, "mixed")
    dev = deviation(qc_runs.energies(url, "mixed"), ref, "slurm vs direct")
    return {"slurm_tasks": len(todo) * args.copies, "slurm_mixed_s": round(seconds, 3),
            "slurm_utilization": round(u["utilization"], 3), "slurm_max_dev_eh": dev}  # fmt: skip


def cross_code(ref: dict[str, float], args: argparse.Namespace) -> dict[str, float]:
    out = {}
    for meth in args.methods:
        pairs = [(ref[f"{m}-{meth}-serial"], ref[f"{m}-{meth}-pyscf"]) for m in args.molecules
                 if f"{m}-{meth}-serial" in ref and f"{m}-{meth}-pyscf" in ref]  # fmt: skip
        worst = max((abs(a - b) for a, b in pairs), default=0.0)
        if worst > TOLERANCE[meth]:
            raise RuntimeError(f"NWChem and PySCF {meth} energies differ by {worst:.2e} Eh > {TOLERANCE[meth]}")
        if pairs:
            out[f"max_dev_nwchem_vs_pyscf_{meth}_eh"] = worst
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(qc_runs.futures_child(json.loads(Path(args.child).read_text()))))
        return {}
    d = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bd-qc-"))
    (d / "inputs").mkdir(parents=True, exist_ok=True)
    inputs = {}
    for m in args.molecules:
        for meth in args.methods:
            path = d / "inputs" / f"{m}-{meth}.nw"
            path.write_text(qc_chem.nwchem_input(m, meth, args.basis))
            inputs[f"{m}-{meth}"] = str(path)
    mixed = calcs(args, qc_chem.VARIANTS)
    local = {"kind": "local", "nodes": args.nodes, "cores": args.cores_per_node}
    cluster = site_cluster(args.site) if args.site else local
    where = ["--site", cluster["dir"]] if args.site else ["--local", "--nodes", str(args.nodes),
                                                          "--cores-per-node", str(args.cores_per_node)]  # fmt: skip
    n_over = args.overhead_tasks if "nwchem" in args.codes else 0
    print(f"# {len(mixed) * args.copies} mixed tasks ({len(args.molecules)} molecules x {args.methods} x "
          f"{sorted({c.variant for c in mixed})} x {args.copies}), basis {args.basis}, {n_over} overhead tasks, "
          f"{args.repeat} repetitions, in {d}")  # fmt: skip
    print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    qc_chem.pyscf_energy("h2", "scf", "sto-3g")  # PySCF imported before the direct runs are timed
    runs: dict[str, list[float]] = {}
    checked: list[tuple[str, dict[str, float]]] = []  # (what, energies by task name), checked at the end
    command: list[str] | None = None
    for rep in range(args.repeat):
        units = ["futures", "serve", "direct", "loop"] if n_over and not args.site else ["futures", "serve", "direct"]
        for unit in rotated([u for u in units if u not in ("futures", "serve") or u in args.modes], rep):
            name = f"{unit}_{rep}"
            if unit == "direct":
                got, total = run_direct(args, mixed, inputs, d / name)
                checked.append(("direct runs disagree", got))
                runs.setdefault("direct_total_s", []).append(total)
            elif unit == "loop":
                if command is None:  # no futures run (--modes serve): the command a user would type
                    command = direct_argv(args, qc_chem.Calc(args.molecules[0], args.methods[0], "mpi2"), inputs)
                if rep == 0:
                    print(f"# loop command: {shlex.join(command)}")
                runs.setdefault("loop_overhead_s", []).append(run_loop(command, n_over, d / name, run_env(args)))
            else:
                url = f"sqlite:///{d}/{name}.db"
                plan = plan_for(args, url, d / name, inputs, cluster, mixed)
                if unit == "futures":
                    out = futures(plan)
                    command = command or out["command"]
                    for phase, s in out["seconds"].items():
                        runs.setdefault(f"futures_{phase}_s", []).append(s)
                else:
                    for phase, s in qc_runs.run_serve(plan, where).items():
                        runs.setdefault(f"serve_{phase}_wall_s", []).append(s)
                for phase in plan["phases"]:
                    u = qc_runs.usage(url, phase)
                    runs.setdefault(f"{unit}_{phase}_span_s", []).append(u["span_s"])
                    if phase == "mixed":
                        runs.setdefault(f"{unit}_utilization", []).append(u["utilization"])
                    else:  # one task at a time: what balsam_dask adds between and around them
                        runs.setdefault(f"{unit}_overhead_gap_ms", []).append(u["gap_ms"])
                        runs.setdefault(f"{unit}_overhead_wrap_ms", []).append(qc_runs.wrap_ms(url, phase))
                    checked.append((f"{unit} vs direct", qc_runs.energies(url, phase)))
        print(f"rep {rep + 1}: " + ", ".join(f"{k}={v[-1]:.3g}" for k, v in runs.items()), flush=True)
    ref = next(got for what, got in checked if what.startswith("direct"))
    figures = figures_of(runs, len(mixed) * args.copies, n_over)
    figures["max_dev_balsam_vs_direct_eh"] = max(deviation(got, ref, what) for what, got in checked)
    figures.update(cross_code(ref, args))
    if args.slurm:
        figures.update(slurm_case(args, d, inputs, ref))
    print("# medians over repetitions; times in s, energies in Eh")
    for k, v in figures.items():
        print(f"{k:36s} {v}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
