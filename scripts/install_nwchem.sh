#!/usr/bin/env bash
# NWChem for benchmarks/qc.py and tests/benchmarks/test_qc.py: Debian's nwchem package (7.0.2,
# built with Open MPI: /usr/bin/nwchem, /usr/bin/mpirun). Does nothing when nwchem is installed.
#
# Usage: scripts/install_nwchem.sh        (as root, on Debian/Ubuntu)
#
# It adds 27 packages (Open MPI 4.1, ScaLAPACK, NWChem and its basis library; ~30 MB to download,
# 153 MB installed); measured here: 20 s. Package init scripts are kept from starting daemons.
set -euo pipefail

log() { printf 'install_nwchem: %s\n' "$*" >&2; }
die() { printf 'install_nwchem: error: %s\n' "$*" >&2; exit 1; }

if command -v nwchem >/dev/null 2>&1 && [[ -x /usr/bin/mpirun ]]; then
    exit 0
fi
[[ $EUID -eq 0 ]] || die "installing packages needs root (or install NWChem yourself and give benchmarks/qc.py --nwchem PATH)"
command -v apt-get >/dev/null 2>&1 || die "no apt-get: install NWChem with your system's packages"
log "installing nwchem (Debian's, with Open MPI)"
aptlog=$(mktemp /tmp/install_nwchem-apt.XXXXXX)
policy_created=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_created=1
fi
export DEBIAN_FRONTEND=noninteractive
apt_install() { apt-get install -y -q --no-install-recommends nwchem >>"$aptlog" 2>&1; }
rc=0
if ! apt_install; then
    log "apt-get install failed; running apt-get update and retrying"
    { apt-get update -q >>"$aptlog" 2>&1 && apt_install; } || rc=1
fi
if ((policy_created)); then
    rm -f /usr/sbin/policy-rc.d
fi
if ((rc)); then
    tail -n 20 "$aptlog" >&2
    die "could not install nwchem (full log: $aptlog)"
fi
rm -f "$aptlog"
command -v nwchem >/dev/null 2>&1 || die "nwchem is not on PATH after installing it"
