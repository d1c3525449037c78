"""``python -m balsam_dask.node_worker``: start one node-worker inside a batch job (the entry
point job scripts call; the code is :mod:`balsam_dask.worker.node_worker`)."""

import sys

from balsam_dask.worker.node_worker import main

if __name__ == "__main__":
    sys.exit(main())
