"""Resource shapes for the backlog summary. Pure.

A shape groups tasks the packing policy treats alike: nodes, cores and GPUs per node, and the
walltime estimate rounded up to its class (``spec.walltime_class``, the rounding the placer
and the allocation policy use), so a million tasks of slightly different estimates still make
a few dozen shapes.
"""

from __future__ import annotations

from typing import NamedTuple

from balsam_dask.spec import walltime_class


class Shape(NamedTuple):
    nodes: int
    cores: int
    gpus: int
    walltime: float  # walltime class in seconds; 0.0 = no estimate


def walltime_bucket(walltime: float | None) -> float:
    """The class a walltime estimate falls in (0.0 for no estimate)."""
    if walltime is None or walltime <= 0:
        return 0.0
    return walltime_class(walltime) or 0.0


def shape_of(nodes: int, cores: int, gpus: int, walltime: float | None) -> Shape:
    return Shape(nodes, cores, gpus, walltime_bucket(walltime))
