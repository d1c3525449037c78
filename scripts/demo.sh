#!/usr/bin/env bash
# The main job: install balsam_dask into .venv and run the demo workload on LocalEnsembleCluster
# with the embedded SQLite store (a hyperparameter sweep of model fits beside `xz` apps of 1, 2
# and 4 threads, packed onto emulated 4-core nodes). Extra arguments go to the demo
# (python -m balsam_dask.demo --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -m pip install -q -e '.[demo]' >.venv/pip-demo.log 2>&1; then
    cat .venv/pip-demo.log >&2
    echo "demo.sh: pip install failed" >&2
    exit 1
fi
command -v xz >/dev/null || { apt-get install -y -qq xz-utils >/dev/null 2>&1 || true; }
exec .venv/bin/python -m balsam_dask.demo "$@"
