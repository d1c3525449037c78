"""A workload that is killed mid-run and resumed (tests/integration/test_resume.py).

Every execution of a task appends its name to ``runs.log``, so the test can tell which
tasks ran twice. Run as ``python -m tests.integration.resume_job STORE_URL WORKDIR``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def leaf(i: int, workdir: str) -> int:
    with open(Path(workdir) / "runs.log", "a") as f:
        f.write(f"leaf-{i}\n")
    time.sleep(0.3 + 0.05 * (i % 5))
    return i * i


def combine(values: list[int], j: int, workdir: str) -> int:
    with open(Path(workdir) / "runs.log", "a") as f:
        f.write(f"combine-{j}\n")
    time.sleep(0.2)
    return sum(values)


N_LEAVES = 24
GROUP = 6


def submit_all(client, workdir: str):  # type: ignore[no-untyped-def]
    leaves = [client.submit(leaf, i, workdir, key=f"leaf-{i}", tags={"job": "resume"}) for i in range(N_LEAVES)]
    combos = []
    for j in range(N_LEAVES // GROUP):
        group = leaves[j * GROUP : (j + 1) * GROUP]
        combos.append(client.submit(combine, group, j, workdir, key=f"combine-{j}", tags={"job": "resume"}))
    return leaves, combos


def expected_total() -> int:
    return sum(i * i for i in range(N_LEAVES))


def main(store_url: str, workdir: str) -> None:
    from balsam_dask import Client, LocalEnsembleCluster

    os.chdir(workdir)
    with LocalEnsembleCluster(nodes=2, cores_per_node=2, store=store_url, workdir=workdir) as cluster:
        with Client(cluster) as client:
            _, combos = submit_all(client, workdir)
            (Path(workdir) / "submitted").write_text("yes")
            client.gather(combos)  # the test kills us long before this returns
            time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
