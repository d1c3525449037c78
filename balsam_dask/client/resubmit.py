"""Client side of resuming: turn the scheduler's resume plan back into futures."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import cloudpickle
import dask
import distributed
from dask._task_spec import DataNode

from balsam_dask.payload import load_payload
from balsam_dask.protocol import SPEC_ANNOTATION


def resubmit(client: distributed.Client, plan: list[dict[str, Any]]) -> dict[Hashable, distributed.Future]:
    """Submit each planned task under its old key, parents first; finished parents come
    back as data from the store. Returns the futures of the resumed tasks."""
    futures: dict[Hashable, distributed.Future] = {}
    data_futures: list[distributed.Future] = []
    for item in plan:
        spec, run_spec = load_payload(item["payload"])
        key = item["key"]
        for dkey, stored in item["data"].items():
            if dkey in futures:
                continue
            data = {dkey: DataNode(dkey, cloudpickle.loads(stored["result"]))}
            data_futures.extend(client.get(data, [dkey], sync=False))
        with dask.annotate(**{SPEC_ANNOTATION: spec}):
            (fut,) = client.get({key: run_spec}, [key], sync=False)
        futures[key] = fut
    # the data futures stay referenced through their dependents' futures
    client._resumed_data = data_futures  # type: ignore[attr-defined]
    return futures
