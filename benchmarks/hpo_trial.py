"""One trial of benchmarks/hpo.py: an sklearn ``MLPClassifier`` trained on the digits data set
(``sklearn.datasets.load_digits``, shipped with scikit-learn) one epoch at a time.

:func:`train` is the task every mode runs (workers import it by path: ``benchmarks.hpo_trial:train``).
It talks to the search through files in the run's directory, which a cluster shares:

- ``job-<id>.jsonl``: a ``start`` line, then a ``rung`` line each time it reaches a rung (its
  validation accuracy), then an ``end`` line if it returns;
- ``job-<id>.go-<k>``: made by the search when the trial is promoted out of rung ``k``. The trial
  trains on meanwhile, but does not report rung ``k + 1`` without it: a trial the search
  stopped never finishes, it waits to be killed;
- ``job-<id>-rung-<k>.pkl``: the model after rung ``k``, written before the ``rung`` line (a
  promotion resumes from it);
- ``job-<id>.stop``: made by the search once the trial's task was killed: a trial in a worker's
  thread, which no kill stops (Dask cannot stop a thread), looks for it after every epoch and returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import time
import warnings
from functools import cache
from pathlib import Path
from typing import Any

#: Share of the digits held out for validation (stratified, fixed split).
VALIDATION = 0.25
#: Seconds between looks for the search's verdict.
VERDICT_POLL = 0.02


@cache
def digits() -> tuple[Any, Any, Any, Any]:
    """The digits split into training and validation sets, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    split: list[Any] = train_test_split(x / 16.0, y, test_size=VALIDATION, random_state=0, stratify=y)
    return split[0], split[1], split[2], split[3]


def warm_up(*_: Any) -> int:
    """Import scikit-learn and load the data in this worker before the search's clock starts."""
    import sklearn.neural_network  # noqa: F401

    digits()
    return 0


def log_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (one write: a reader never sees half a line it would take)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def save(path: Path, model: Any) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(pickle.dumps(model))
    os.replace(tmp, path)


def verdict(go: Path, stop: Path) -> bool:
    """Wait for the search's verdict on the last rung: True (``go``: promoted) or False (``stop``;
    a trial in its own process is killed while it waits)."""
    while not go.exists():
        if stop.exists():
            return False
        time.sleep(VERDICT_POLL)
    return True


def stopped(log: Path, accuracy: float, epochs: int) -> dict[str, Any]:
    log_line(log, {"event": "end", "t": time.time(), "stopped": True})
    return {"accuracy": accuracy, "epochs": epochs, "stopped": True}


def train(job: dict[str, Any]) -> dict[str, Any]:
    """Train ``job["config"]`` from rung ``job["start"]`` (resuming ``job["resume"]``, a
    checkpoint, if given) through the rungs ``job["rungs"]`` (epoch budgets), with BLAS and
    OpenMP limited to ``job["cores"]`` threads (by threadpoolctl here if ``job["own_limits"]``);
    returns the last rung's accuracy and epochs."""
    import numpy as np
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    run = Path(job["dir"])
    jid, start, rungs, cfg = job["job"], job["start"], job["rungs"], job["config"]
    log, stop = run / f"job-{jid}.jsonl", run / f"job-{jid}.stop"
    log_line(log, {"event": "start", "t": time.time(), "pid": os.getpid()})
    x_train, x_val, y_train, y_val = digits()
    if job.get("resume"):
        model = pickle.loads(Path(job["resume"]).read_bytes())
    else:
        model = MLPClassifier(hidden_layer_sizes=tuple(cfg["hidden"]), learning_rate_init=cfg["learning_rate"],
                              alpha=cfg["alpha"], batch_size=cfg["batch_size"],
                              random_state=job["seed"])  # fmt: skip
    epochs = rungs[start - 1] if start else 0
    accuracy = 0.0
    classes = np.arange(10)
    # ours sizes a task's pools for its cores (balsam_dask/worker/threads.py); bare Dask does not
    limits = threadpool_limits(limits=job["cores"]) if job["own_limits"] else contextlib.nullcontext()
    with limits, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a diverging learning rate overflows: its accuracy says so
        for rung in range(start, len(rungs)):
            while epochs < rungs[rung]:
                if stop.exists():
                    return stopped(log, accuracy, epochs)
                model.partial_fit(x_train, y_train, classes=classes)
                epochs += 1
            # trained on past the last rung while the search judged it; it must have gone on
            if rung > start and not verdict(run / f"job-{jid}.go-{rung - 1}", stop):
                return stopped(log, accuracy, epochs)
            accuracy = float(model.score(x_val, y_val))
            if rung < len(rungs) - 1:
                save(run / f"job-{jid}-rung-{rung}.pkl", model)
            log_line(log, {"event": "rung", "rung": rung, "epochs": epochs, "accuracy": accuracy, "t": time.time()})
    log_line(log, {"event": "end", "t": time.time(), "stopped": False})
    return {"accuracy": accuracy, "epochs": epochs, "stopped": False}
