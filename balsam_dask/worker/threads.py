"""``cores=`` for a Python function running in a worker's thread: its BLAS and OpenMP pools.

Dask's nanny starts workers with one-thread pools (OMP_NUM_THREADS=1 and friends), so a
``cores=8`` function would compute on one core. Around the call, threadpoolctl sets:

- OpenMP: the calling thread's own team size (``omp_set_num_threads`` is per thread): exact;
- BLAS (OpenBLAS, MKL, BLIS keep one pool per process): the largest ``cores`` among the
  functions running in the worker's threads at that moment, set back when they end.

Isolated functions (``isolate=True``), apps and MPI ranks get the same limits exactly, as
environment variables of their own processes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

#: Variables that size a process's thread pools, set to a task's threads per rank.
POOL_VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
)  # fmt: skip


def pin_missing(environ: MutableMapping[str, str]) -> None:
    """Give the pool variables ``environ`` lacks the value its set ones agree on. Dask's nanny
    sets OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS to 1, not the others (BLIS
    and numexpr follow OMP_NUM_THREADS anyway): pinned alike, a one-thread task's environment is
    the worker's own, and its processes start without a copy of it (worker/process.py)."""
    values = {environ[name] for name in POOL_VARIABLES if name in environ}
    if len(values) == 1:
        (value,) = values
        for name in POOL_VARIABLES:
            environ.setdefault(name, value)


class PoolLimits:
    """The thread-pool sizes of one worker process, shared by the tasks in its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[int] = []  # cores of each running in-thread task
        self._controller: Any = None
        self._modules = -1  # len(sys.modules) when the libraries were last looked up
        self._blas: Any = None  # the limiter holding the BLAS pools, to restore them
        self._blas_size = 0

    def _libraries(self) -> Any:
        """threadpoolctl's view of the loaded pools, looked up again after imports (~1 ms)."""
        if self._controller is None or len(sys.modules) != self._modules:
            from threadpoolctl import ThreadpoolController

            self._controller = ThreadpoolController()
            self._modules = len(sys.modules)
        return self._controller

    @contextlib.contextmanager
    def limit(self, cores: int) -> Iterator[None]:
        """Run the body with ``cores`` threads in this thread's OpenMP team and at least that
        many in the BLAS pools (see the module docstring)."""
        with self._lock:
            ctl = self._libraries()
            if not ctl.lib_controllers:  # no pool loaded yet: nothing to size
                ctl = None
            self._running.append(cores)
            if ctl is not None:
                self._resize_blas(ctl)
        omp = ctl.select(user_api="openmp").limit(limits=cores) if ctl is not None else None
        try:
            yield
        finally:
            if omp is not None:
                omp.restore_original_limits()
            with self._lock:
                self._running.remove(cores)
                if self._blas is not None:
                    self._resize_blas(self._libraries())

    def _resize_blas(self, ctl: Any) -> None:
        want = max(self._running, default=0)
        if want == self._blas_size:
            return
        if self._blas is not None:  # back to the worker's own sizes first
            self._blas.restore_original_limits()
            self._blas, self._blas_size = None, 0
        if want:
            self._blas = ctl.select(user_api="blas").limit(limits=want)
            self._blas_size = want
