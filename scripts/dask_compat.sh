#!/usr/bin/env bash
# Dask's own contract, measured: runs distributed's distributed/tests/test_client.py against the
# INSTALLED distributed three ways and prints, per mode, passed/failed/errors/skipped and the tests
# that pass on bare Dask but not in that mode (regressions). Not run by CI (it needs Dask's sources).
#
#   scripts/dask_compat.sh SRC_DIR [MODE...] [-- PYTEST_ARG...]
#       MODE: bare plugin nodes client (default: bare plugin client); PYTEST_ARGs go to every full
#       run, e.g. -- -k "submit or gather"
#
# Modes (scripts/dask_compat_plugin.py, loaded with -p, does the injection):
#   bare    Dask untouched, the baseline;
#   plugin  a balsam_dask.BalsamPlugin (fresh SQLite store each) in every Scheduler the tests create,
#           in-process and in the sync fixtures' spawned scheduler process;
#   nodes   as plugin, and every Worker/Nanny a balsam node-worker (preload balsam_dask.worker_setup);
#   client  as nodes, and balsam_dask.Client in place of distributed.Client everywhere (its tasks
#           run on node-workers only: on plain Dask workers every one of them would wait forever).
#
# SRC_DIR: a dask/distributed checkout, or a bare git directory of the repository (e.g. what
# `git clone --bare https://github.com/dask/distributed` gives). From a bare directory the script
# takes the tag equal to the installed version, else the newest of HEAD and the tags whose
# distributed/client.py and distributed/utils_test.py equal the installed ones.
# Only test_client.py, the TLS certificates (the wheel ships none; utils_test.certs_dir is pointed
# at the copies), the repository's root conftest.py and its pytest settings (pyproject.toml: warnings
# are errors, as upstream) are copied into a scratch directory; `import distributed` resolves to the
# installed package, never to the sources.
#
# Environment:
#   PYTHON           the venv's python with distributed and balsam_dask (default: python on PATH)
#   DASK_COMPAT_TMP  scratch directory (default: a new /tmp/dask_compat.XXXXXX, kept for reading)
#   TEST_TIMEOUT     per test, seconds (default 180; gen_cluster tests have their own 30 s)
#   TESTS            a file of test ids, one a line, as printed (e.g. a run's regressions.txt): the
#                    full runs take only these
#   RECHECK          each regression is run alone RECHECK times in its mode and RECHECK times bare,
#                    to tell real from flaky (default 3; 0: no recheck)
#   RECHECK_ONLY=1   no full runs: recheck the regressions of an earlier run in DASK_COMPAT_TMP, or
#                    the tests listed in TESTS
#   DASK_COMPAT_SUBPROCESS=0  inject in-process only, not into the sync fixtures' spawned processes
#   DASK_COMPAT_PLUGIN_KW     JSON keyword arguments for every BalsamPlugin, e.g. '{"writer_process": false}'
# test_bad_address is deselected: this sandbox accepts connections to any address.
#
# Exit status: 0 when no test that passes bare fails in another mode (after RECHECK: a regression
# that never fails alone with ours, or fails alone bare too, is reported as flaky and not counted);
# 1 otherwise; 2 on bad usage.
set -euo pipefail

usage() { echo "usage: $0 SRC_DIR [bare|plugin|nodes|client ...] [-- PYTEST_ARG...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
SRC=$(cd "$1" && pwd) || usage
shift
MODES=()
while [[ $# -gt 0 && $1 != -- ]]; do MODES+=("$1"); shift; done
[[ $# -gt 0 ]] && shift  # the --
EXTRA=("$@")
[[ ${#MODES[@]} -gt 0 ]] || MODES=(bare plugin client)
for m in "${MODES[@]}"; do
    [[ $m == bare || $m == plugin || $m == nodes || $m == client ]] || { echo "$0: unknown mode '$m'" >&2; usage; }
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
TIMEOUT=${TEST_TIMEOUT:-180}
RECHECK=${RECHECK:-3}
SCRATCH=${DASK_COMPAT_TMP:-$(mktemp -d /tmp/dask_compat.XXXXXX)}
mkdir -p "$SCRATCH"
SCRATCH=$(cd "$SCRATCH" && pwd)
export PYTHONPATH="$REPO:$REPO/scripts${PYTHONPATH:+:$PYTHONPATH}"

read -r VERSION INSTALLED < <("$PY" -c 'import os, distributed; print(distributed.__version__, os.path.dirname(distributed.__file__))')
BALSAM=$("$PY" -c 'import os, balsam_dask; print(os.path.dirname(balsam_dask.__file__))')
echo "distributed $VERSION at $INSTALLED; balsam_dask at $BALSAM; scratch $SCRATCH"

# ------------------------------------------------------------------ the sources
SUITE=$SCRATCH/suite
mkdir -p "$SUITE" "$SCRATCH/certs"
same_as_installed() {  # REF: do the ref's client.py and utils_test.py equal the installed ones?
    local f
    for f in client.py utils_test.py; do
        git --git-dir="$SRC" show "$1:distributed/$f" 2>/dev/null | cmp -s - "$INSTALLED/$f" || return 1
    done
}
if [[ -f $SRC/distributed/tests/test_client.py ]]; then  # a work tree
    cp "$SRC/distributed/tests/test_client.py" "$SRC/conftest.py" "$SRC/pyproject.toml" "$SUITE/"
    cp "$SRC"/distributed/tests/tls-*.pem "$SCRATCH/certs/"
    for f in client.py utils_test.py; do
        cmp -s "$SRC/distributed/$f" "$INSTALLED/$f" \
            || echo "WARNING: $SRC/distributed/$f differs from the installed one: the tests may not match" >&2
    done
    echo "sources: work tree $SRC ($(git -C "$SRC" describe --tags --always 2>/dev/null || echo 'not git'))"
elif git --git-dir="$SRC" rev-parse -q --verify HEAD >/dev/null 2>&1; then  # a bare repository
    REF=""
    if git --git-dir="$SRC" rev-parse -q --verify "refs/tags/$VERSION" >/dev/null; then
        REF=$VERSION
    else
        # HEAD and the tags, newest commit first
        while read -r ref; do
            if same_as_installed "$ref"; then REF=$ref; break; fi
        done < <({ echo HEAD; git --git-dir="$SRC" tag; } | while read -r r; do
            echo "$(git --git-dir="$SRC" log -1 --format=%ct "$r") $r"; done | sort -rn | cut -d' ' -f2)
    fi
    [[ -n $REF ]] || { echo "$0: no tag $VERSION, and neither HEAD nor a tag has the installed client.py and utils_test.py" >&2; exit 2; }
    same_as_installed "$REF" || echo "WARNING: $REF's client.py or utils_test.py differ from the installed ones" >&2
    git --git-dir="$SRC" show "$REF:distributed/tests/test_client.py" >"$SUITE/test_client.py"
    git --git-dir="$SRC" show "$REF:conftest.py" >"$SUITE/conftest.py"
    git --git-dir="$SRC" show "$REF:pyproject.toml" >"$SUITE/pyproject.toml"
    for pem in $(git --git-dir="$SRC" ls-tree --name-only "$REF" distributed/tests/ | grep '/tls-.*\.pem$'); do
        git --git-dir="$SRC" show "$REF:$pem" >"$SCRATCH/certs/$(basename "$pem")"
    done
    echo "sources: $SRC at $REF ($(git --git-dir="$SRC" rev-parse "$REF^{commit}"))"
else
    echo "$0: $SRC is neither a distributed checkout nor a bare git repository of it" >&2
    exit 2
fi
export DASK_COMPAT_CERTS=$SCRATCH/certs

# ------------------------------------------------------------------ running
# run_pytest MODE RUN_DIR [pytest args...]: one pytest session, from RUN_DIR (its scratch files land there)
run_pytest() {
    local mode=$1 run=$2
    shift 2
    rm -rf "$run"
    mkdir -p "$run"
    (cd "$run" && DASK_COMPAT_MODE=$mode DASK_COMPAT_RUN=$run nice -n 10 "$PY" -m pytest \
        -c "$SUITE/pyproject.toml" --rootdir "$SUITE" -p dask_compat_plugin -p no:cacheprovider \
        --tb=native --timeout "$TIMEOUT" -o timeout_method=signal --color=no \
        --deselect test_client.py::test_bad_address "$@" >"$run/pytest.log" 2>&1) || true
}

TARGETS=("$SUITE/test_client.py")
if [[ -n ${TESTS:-} ]]; then
    TARGETS=()
    while read -r test; do [[ -n $test ]] && TARGETS+=("$SUITE/$test"); done <"$TESTS"
    [[ ${#TARGETS[@]} -gt 0 ]] || { echo "$0: TESTS=$TESTS lists no test" >&2; exit 2; }
fi
RUNS=$SCRATCH/runs
for mode in "${MODES[@]}"; do
    [[ ${RECHECK_ONLY:-0} == 1 ]] && break
    start=$(date +%s)
    run_pytest "$mode" "$RUNS/$mode" "${TARGETS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
    echo "mode $mode: $(( $(date +%s) - start )) s wall, log $RUNS/$mode/pytest.log"
    tail -n 1 "$RUNS/$mode/pytest.log"
done

status=0
if [[ ${RECHECK_ONLY:-0} == 1 ]]; then
    status=1
else
    "$PY" "$REPO/scripts/dask_compat_plugin.py" summary "$RUNS" "${MODES[@]}" || status=1
fi

# ------------------------------------------------------------------ real or flaky
if [[ $status -ne 0 && $RECHECK -gt 0 ]]; then
    status=0
    echo "== recheck: each regression alone, $RECHECK times in its mode and $RECHECK times bare"
    for mode in "${MODES[@]}"; do
        list=$RUNS/$mode/regressions.txt
        [[ ${RECHECK_ONLY:-0} == 1 && -n ${TESTS:-} ]] && list=$TESTS
        [[ $mode != bare && -s $list ]] || continue
        while read -r test; do
            [[ -n $test ]] || continue
            fails_mode=0 fails_bare=0
            for i in $(seq "$RECHECK"); do
                for m in "$mode" bare; do
                    name=${test##*::}; run="$RUNS/recheck/$mode/${name//\//_}/$m-$i"
                    run_pytest "$m" "$run" "$SUITE/$test"
                    s=$("$PY" "$REPO/scripts/dask_compat_plugin.py" status "$run" "$test")
                    if [[ $s != passed ]]; then
                        if [[ $m == bare ]]; then fails_bare=$((fails_bare + 1)); else fails_mode=$((fails_mode + 1)); fi
                    fi
                done
            done
            if [[ $fails_mode -gt 0 && $fails_bare -eq 0 ]]; then
                verdict=real
                status=1
            else
                verdict=flaky
            fi
            echo "  $mode $test: fails alone $fails_mode/$RECHECK with ours, $fails_bare/$RECHECK bare: $verdict"
        done <"$list"
    done
fi
echo "results in $RUNS (pytest.log, results.jsonl, injected.tsv, regressions.txt per mode)"
exit "$status"
