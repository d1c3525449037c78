"""pytest plugin and summarizer for scripts/dask_compat.sh: Dask's own tests against balsam_dask.

As a pytest plugin (``-p dask_compat_plugin``, this directory on PYTHONPATH) it reads
``DASK_COMPAT_MODE``:

- ``bare``: Dask untouched (the baseline);
- ``plugin``: every ``distributed.Scheduler`` gets a ``balsam_dask.BalsamPlugin`` with a fresh
  SQLite store of its own (``$DASK_COMPAT_RUN/stores``);
- ``nodes``: as ``plugin``, and every ``Worker`` and ``Nanny`` preloads ``balsam_dask.worker_setup``
  (each worker a node-worker of its threads' cores): balsam tasks run on node-workers only, a
  plain Dask worker never takes one;
- ``client``: as ``nodes``, and ``balsam_dask.Client`` stands in for ``distributed.Client``,
  ``distributed.client.Client`` and ``distributed.utils_test.Client`` (gen_cluster's clients).

The classes' ``__init__`` are wrapped in this process; ``distributed.utils_test``'s
``run_scheduler``/``run_worker``/``run_nanny`` (the targets of the processes the sync ``cluster()``
fixture spawns) are replaced by the functions below, which wrap them in the child first
(``DASK_COMPAT_SUBPROCESS=0``: not, in-process injection only). A scheduler started as a command
(``dask scheduler``, ``SubprocessCluster``) is not reached. ``DASK_COMPAT_PLUGIN_KW`` (JSON) adds
keyword arguments to every BalsamPlugin, e.g. ``{"writer_process": false}``.

In every mode it writes each test phase's outcome to ``$DASK_COMPAT_RUN/results.jsonl`` and each
injection (test id, in-process or subprocess) to ``$DASK_COMPAT_RUN/injected.tsv``; it points
``distributed.utils_test.certs_dir`` at ``$DASK_COMPAT_CERTS`` (the wheel ships no TLS certificates).

As a program: ``python dask_compat_plugin.py summary RUNS_DIR MODE...`` prints the counts per mode
and the tests that pass bare but not in that mode (``regressions.txt`` in each run directory);
``python dask_compat_plugin.py status RUN_DIR TEST_ID`` prints one test's outcome.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

MODES = ("bare", "plugin", "nodes", "client")
#: What each mode injects: a BalsamPlugin per scheduler, node-workers, balsam_dask.Client.
FEATURES = {"bare": (), "plugin": ("scheduler",), "nodes": ("scheduler", "workers"),
            "client": ("scheduler", "workers", "client")}  # fmt: skip
_counter = itertools.count()


def _mode() -> str:
    mode = os.environ.get("DASK_COMPAT_MODE", "bare")
    if mode not in MODES:
        raise SystemExit(f"DASK_COMPAT_MODE={mode!r} is invalid: use one of {', '.join(MODES)}")
    return mode


def _run_dir() -> Path:
    return Path(os.environ.get("DASK_COMPAT_RUN") or os.getcwd())


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]


def _log_injection(where: str) -> None:
    with open(_run_dir() / "injected.tsv", "a") as f:
        f.write(f"{_current_test()}\t{where}\t{os.getpid()}\n")


def _wrap_init(cls: Any, adjust: Any) -> None:
    """Make ``cls.__init__`` pass its keyword arguments through ``adjust`` first (once per class)."""
    original = cls.__init__
    if getattr(original, "_dask_compat", False):
        return

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **adjust(kwargs))

    __init__._dask_compat = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


def install(where: str) -> None:
    """Apply this process's mode to Dask's classes: ``where`` says which process it is."""
    features = FEATURES[_mode()]
    if "scheduler" in features:
        from distributed.scheduler import Scheduler

        from balsam_dask import BalsamPlugin

        stores = _run_dir() / "stores"
        stores.mkdir(parents=True, exist_ok=True)
        options = json.loads(os.environ.get("DASK_COMPAT_PLUGIN_KW") or "{}")

        def with_plugin(kwargs: dict[str, Any]) -> dict[str, Any]:
            plugins = list(kwargs.get("plugins") or ())
            if not any(isinstance(p, BalsamPlugin) for p in plugins):
                db = stores / f"s-{os.getpid()}-{next(_counter)}.db"
                plugins.append(BalsamPlugin(store=f"sqlite:///{db}", **options))
                _log_injection(where)
            return {**kwargs, "plugins": plugins}

        _wrap_init(Scheduler, with_plugin)
    if "workers" in features:
        from distributed import Nanny, Worker

        _wrap_init(Worker, _with_node_preload)
        _wrap_init(Nanny, _with_node_preload)  # its worker process gets the preload from the nanny


def _with_node_preload(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A Worker's or Nanny's arguments with balsam_dask's node-worker preload added."""
    import dask

    from balsam_dask.protocol import PRELOAD

    preload = kwargs.get("preload") or dask.config.get("distributed.worker.preload") or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    if PRELOAD in preload:
        return kwargs
    out = {**kwargs, "preload": [*preload, PRELOAD]}
    argv = kwargs.get("preload_argv") or dask.config.get("distributed.worker.preload-argv") or []
    if argv and isinstance(argv[0], (list, tuple)):  # one argv per preload: ours takes none
        out["preload_argv"] = [*argv, []]
    return out


def _original(name: str) -> Any:
    import distributed.utils_test

    original = getattr(distributed.utils_test, name)
    if getattr(original, "__module__", "") == __name__:  # pragma: no cover - a child never runs pytest_configure
        raise RuntimeError(f"dask_compat: the original utils_test.{name} is lost")
    return original


# The targets of the processes that utils_test.cluster() spawns (the sync fixtures c, s, a, b,
# client): the mode applied in the child first, then Dask's own target.
def run_scheduler(*args: Any, **kwargs: Any) -> None:
    install("subprocess")
    _original("run_scheduler")(*args, **kwargs)


def run_worker(*args: Any, **kwargs: Any) -> None:
    install("subprocess")
    _original("run_worker")(*args, **kwargs)


def run_nanny(*args: Any, **kwargs: Any) -> None:
    install("subprocess")
    _original("run_nanny")(*args, **kwargs)


# ---------------------------------------------------------------------- pytest hooks
def pytest_configure(config: Any) -> None:
    import distributed
    import distributed.client
    import distributed.utils_test

    # pytest-rerunfailures' marker (not installed here): such tests run once; the script's recheck tells flakes
    config.addinivalue_line("markers", "flaky(reruns, reruns_delay, condition): pytest-rerunfailures' marker")
    certs = os.environ.get("DASK_COMPAT_CERTS")
    if certs:
        distributed.utils_test.certs_dir = certs
    mode = _mode()
    if mode != "bare":
        install("in-process")
        if os.environ.get("DASK_COMPAT_SUBPROCESS", "1") != "0":
            for target in (run_scheduler, run_worker, run_nanny):
                setattr(distributed.utils_test, target.__name__, target)
    if "client" in FEATURES[mode]:
        import balsam_dask

        for module in (distributed, distributed.client, distributed.utils_test):
            module.Client = balsam_dask.Client  # type: ignore[attr-defined]


def pytest_report_header(config: Any) -> str:
    import distributed

    import balsam_dask

    return (
        f"dask_compat: mode={_mode()}, distributed {distributed.__version__} from {Path(distributed.__file__).parent}, "
        f"balsam_dask from {Path(balsam_dask.__file__).parent}"
    )


def pytest_runtest_logreport(report: Any) -> None:
    text = report.longreprtext if report.outcome != "passed" else ""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2])
    record = {
        "id": report.nodeid, "when": report.when, "outcome": report.outcome,
        "xfail": hasattr(report, "wasxfail"), "duration": round(report.duration, 3), "text": text[-20000:],
    }  # fmt: skip
    with open(_run_dir() / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        with open(_run_dir() / "collect_errors.txt", "a") as f:
            f.write(f"{report.nodeid or '<session>'}: {_gist(report.longreprtext)}\n")


# ---------------------------------------------------------------------- summary
def outcomes(run: Path) -> dict[str, tuple[str, str]]:
    """Each test's outcome in a run (passed, failed, error, skipped, xfailed, xpassed) and why.

    A test that passes but fails in setup or teardown counts as an error (pytest counts it twice)."""
    phases: dict[str, dict[str, dict[str, Any]]] = {}
    path = run / "results.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            phases.setdefault(r["id"], {})[r["when"]] = r
    out: dict[str, tuple[str, str]] = {}
    for test, ph in phases.items():
        setup, call, teardown = ph.get("setup"), ph.get("call"), ph.get("teardown")
        if setup and setup["outcome"] == "failed":
            out[test] = ("error", "setup: " + _gist(setup["text"]))
        elif setup and setup["outcome"] == "skipped":
            out[test] = ("xfailed" if setup["xfail"] else "skipped", _gist(setup["text"]))
        elif call is None:
            out[test] = ("error", "no call phase (the run stopped?)")
        elif call["outcome"] == "failed":
            out[test] = ("failed", _gist(call["text"]))
        elif call["outcome"] == "skipped":
            out[test] = ("xfailed" if call["xfail"] else "skipped", _gist(call["text"]))
        elif teardown and teardown["outcome"] == "failed":
            out[test] = ("error", "teardown: " + _gist(teardown["text"]))
        else:
            out[test] = ("xpassed" if call["xfail"] else "passed", "")
    return out


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Failed|Interrupt|Warning|Killed|Timeout)\w*(:|$)")


def _gist(text: str) -> str:
    """The exception line of a traceback (its last one, after its root cause's if chained), else its last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    found = [ln for ln in lines if _EXCEPTION.match(ln)]
    if len(found) > 1 and "direct cause of the following exception" in text and found[0] != found[-1]:
        return f"{found[-1][:150]} <- {found[0][:150]}"
    return (found or lines or [""])[-1][:300]


def injections(run: Path) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {}
    path = run / "injected.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            test, where, _pid = line.split("\t")
            kinds.setdefault(test, set()).add(where)
    return kinds


def summary(runs: Path, modes: list[str]) -> int:
    """Print counts per mode and the regressions against ``bare``; the number of regressions."""
    results = {m: outcomes(runs / m) for m in modes}
    base = results.get("bare")
    total = 0
    for mode in modes:
        res = results[mode]
        errors = runs / mode / "collect_errors.txt"
        if errors.exists() or not res:
            print(f"== {mode}: collection failed, no tests or not all: see {runs / mode / 'pytest.log'}")
            print(errors.read_text() if errors.exists() else "(no results)\n", end="")
            total += 1
        counts = {k: sum(1 for s, _ in res.values() if s == k) for k in
                  ("passed", "failed", "error", "skipped", "xfailed", "xpassed")}  # fmt: skip
        print(f"== {mode}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" ({len(res)} tests)")
        if mode != "bare":
            inj = injections(runs / mode)
            ran = [t for t in res if res[t][0] not in ("skipped", "xfailed")]
            n_in = sum(1 for t in ran if "in-process" in inj.get(t, ()))
            n_sub = sum(1 for t in ran if "subprocess" in inj.get(t, ()))
            n_none = sum(1 for t in ran if t not in inj)
            print(f"   BalsamPlugin injected: {n_in} tests with an in-process scheduler, {n_sub} with a subprocess "
                  f"scheduler (utils_test.cluster), {n_none} tests with none")  # fmt: skip
        if base is None or mode == "bare":
            continue
        missing = ("missing", "not run")
        regressions = sorted(t for t, (s, _) in base.items() if s == "passed" and res.get(t, missing)[0] != "passed")
        gains = sorted(t for t, (s, _) in res.items() if s == "passed" and base.get(t, missing)[0] != "passed")
        total += len(regressions)
        (runs / mode / "regressions.txt").write_text("".join(f"{t}\n" for t in regressions))
        print(f"   regressions (pass bare, not in {mode}): {len(regressions)}")
        for t in regressions:
            status, why = res.get(t, missing)
            print(f"     {t}  [{status}] {why}")
        if gains:
            print(f"   pass in {mode} but not bare: {len(gains)}: {' '.join(gains)}")
    return total


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "summary":
        return 1 if summary(Path(argv[1]), argv[2:]) else 0
    if len(argv) == 3 and argv[0] == "status":
        print(outcomes(Path(argv[1])).get(argv[2], ("missing", "not run"))[0])
        return 0
    print("usage: dask_compat_plugin.py summary RUNS_DIR MODE... | status RUN_DIR TEST_ID", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
