"""Entry point run by every rank of an MPI Python task.

    mpiexec ... python -m balsam_dask.worker.mpi_call CALL.pkl OUTDIR

``CALL.pkl`` holds ``(fn, args, kwargs)`` (cloudpickle); each rank calls
``fn(MPI.COMM_WORLD, *args, **kwargs)``. Rank 0 writes its return value to
``OUTDIR/result.pkl``. A rank that raises writes ``OUTDIR/error.<rank>.pkl`` (the
exception type, message and traceback) and aborts the whole job, so ranks blocked in a
collective do not wait forever.
"""

from __future__ import annotations

import os
import sys
import traceback

import cloudpickle

from balsam_dask.worker.pyrun import write_outcome


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m balsam_dask.worker.mpi_call CALL.pkl OUTDIR", file=sys.stderr)
        return 2
    call_path, outdir = argv
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    with open(call_path, "rb") as f:
        fn, args, kwargs, *ctx = cloudpickle.load(f)
    if ctx:  # balsam_dask.current_task() on every rank
        from balsam_dask.worker.context import set_current

        set_current(ctx[0])
    try:
        value = fn(comm, *args, **kwargs)
    except BaseException as e:
        tb = traceback.format_exc()
        sys.stderr.write(f"[rank {rank}] {tb}")
        write_outcome(os.path.join(outdir, f"error.{rank}.pkl"), ("err", rank, type(e).__name__, str(e), tb))
        sys.stderr.flush()
        comm.Abort(1)
        return 1
    if rank == 0:
        write_outcome(os.path.join(outdir, "result.pkl"), ("ok", value))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
