"""Resource shapes for the backlog summary. Pure.

A shape groups tasks the packing policy treats alike: nodes, cores and GPUs per node,
and the walltime estimate rounded up to a bucket (so a million tasks of slightly
different estimates still make a handful of shapes).
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

#: Upper bounds of walltime buckets, seconds. Estimates above the last bound keep
#: their own (rounded up to a whole hour) value.
WALLTIME_BUCKETS: tuple[float, ...] = (
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    10800.0,
    14400.0,
    21600.0,
    28800.0,
    43200.0,
    86400.0,
)


class Shape(NamedTuple):
    nodes: int
    cores: int
    gpus: int
    walltime: float  # bucket upper bound in seconds; 0.0 = no estimate


def walltime_bucket(walltime: float | None) -> float:
    """The bucket bound a walltime estimate falls in (0.0 for no estimate)."""
    if walltime is None or walltime <= 0:
        return 0.0
    i = bisect.bisect_left(WALLTIME_BUCKETS, walltime)
    if i < len(WALLTIME_BUCKETS):
        return WALLTIME_BUCKETS[i]
    hours = -(-walltime // 3600.0)
    return hours * 3600.0


def shape_of(nodes: int, cores: int, gpus: int, walltime: float | None) -> Shape:
    return Shape(nodes, cores, gpus, walltime_bucket(walltime))
