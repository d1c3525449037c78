#!/usr/bin/env bash
# A PostgreSQL server for the balsam_dask tests (DESIGN.md §7).
#
# Usage: pg_local.sh ensure   # prints the SQLAlchemy URL of a server with database `test`
#        pg_local.sh stop     # stops the throwaway cluster if (and only if) `ensure` started it
#
# `ensure` first probes 127.0.0.1:PG_PORT_PROBE (5432): if a server answers there with database
# `test`, its URL is printed and nothing is started. Otherwise it starts a throwaway cluster from
# the PostgreSQL binaries (installed with apt if missing) in BALSAM_DASK_PG_DIR
# (/tmp/balsam-dask-pg) on 127.0.0.1:BALSAM_DASK_PG_PORT (55432; the next free port if taken),
# trust auth, fsync off, creates database `test`, records itself in a marker file, and prints
# its URL. Log lines go to stderr, so `export BALSAM_DASK_TEST_PG="$(pg_local.sh ensure)"` works.
#
# `stop` never touches a server it did not start: it acts only on the marker file's cluster.
set -euo pipefail

readonly PROBE_PORT=${PG_PORT_PROBE:-5432}
readonly PG_DIR=${BALSAM_DASK_PG_DIR:-/tmp/balsam-dask-pg}
readonly PG_PORT_DEFAULT=${BALSAM_DASK_PG_PORT:-55432}
readonly PG_USER=postgres
readonly DB=test
readonly DATA="$PG_DIR/data"
readonly SOCK_DIR="$PG_DIR/sock"
readonly MARKER="$PG_DIR/started-by-pg_local"

log() { printf 'pg_local: %s\n' "$*" >&2; }
die() { printf 'pg_local: error: %s\n' "$*" >&2; exit 1; }

url_for() { printf 'postgresql+psycopg://%s@127.0.0.1:%s/%s\n' "$PG_USER" "$1" "$DB"; }

# Newest installed server binaries, preferring the image's PostgreSQL 15.
find_bindir() {
    local d
    if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
        echo /usr/lib/postgresql/15/bin
        return 0
    fi
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
    [[ -x "$d" ]] || return 1
    dirname "$d"
}

# Client tools: the server bindir has pg_isready/psql too, so this works without postgresql-client.
client() {
    local tool=$1 bindir
    shift
    if bindir=$(find_bindir) && [[ -x "$bindir/$tool" ]]; then
        "$bindir/$tool" "$@"
    elif command -v "$tool" >/dev/null 2>&1; then
        "$tool" "$@"
    else
        return 127
    fi
}

# True if a server on 127.0.0.1:PORT accepts us as postgres into database `test`.
answers() {
    local port=$1
    client pg_isready -q -h 127.0.0.1 -p "$port" -t 3 >/dev/null 2>&1 &&
        PGCONNECT_TIMEOUT=3 client psql -X -q -h 127.0.0.1 -p "$port" -U "$PG_USER" -d "$DB" \
            -tA -c 'select 1' 2>/dev/null | grep -qx 1
}

port_in_use() {
    local port=$1
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Htan exclude time-wait "( sport = :$port )" 2>/dev/null)" ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

# Run a command as the postgres user when we are root (initdb refuses to run as root).
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups -- "$@"
    else
        "$@"
    fi
}

install_postgres() {
    [[ $EUID -eq 0 ]] || die "PostgreSQL binaries are missing and installing them needs root"
    log "installing postgresql with apt"
    local aptlog policy_created=0 rc=0
    aptlog=$(mktemp /tmp/pg_local-apt.XXXXXX)
    # Keep the package from starting a system-wide server on 5432 while it installs.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends postgresql >>"$aptlog" 2>&1; then
        log "apt-get install failed; running apt-get update and retrying"
        { apt-get update -q >>"$aptlog" 2>&1 &&
            apt-get install -y -q --no-install-recommends postgresql >>"$aptlog" 2>&1; } || rc=1
    fi
    if ((policy_created)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    if ((rc)); then
        tail -n 20 "$aptlog" >&2
        die "could not install postgresql (full log: $aptlog)"
    fi
    rm -f "$aptlog"
}

marker_field() { sed -n "s/^$1=//p" "$MARKER" 2>/dev/null | head -n 1; }

cmd_ensure() {
    if answers "$PROBE_PORT"; then
        url_for "$PROBE_PORT"
        return 0
    fi
    # Reuse a throwaway cluster we started earlier, if it still answers.
    local port
    if [[ -f "$MARKER" ]]; then
        port=$(marker_field port)
        if [[ -n "$port" ]] && answers "$port"; then
            log "reusing the throwaway cluster in $PG_DIR"
            url_for "$port"
            return 0
        fi
        log "stale throwaway cluster in $PG_DIR; restarting it"
        cmd_stop
    fi
    log "no server with database '$DB' on 127.0.0.1:$PROBE_PORT; starting a throwaway cluster"

    local bindir t0=$SECONDS
    bindir=$(find_bindir) || { install_postgres; bindir=$(find_bindir) || die "no initdb found"; }
    if [[ $EUID -eq 0 ]] && ! id -u "$PG_USER" >/dev/null 2>&1; then
        die "user '$PG_USER' does not exist (install the postgresql package)"
    fi

    port=$PG_PORT_DEFAULT
    while port_in_use "$port"; do
        port=$((port + 1))
        ((port < PG_PORT_DEFAULT + 100)) || die "no free port from $PG_PORT_DEFAULT"
    done

    rm -rf "$PG_DIR"
    mkdir -p "$PG_DIR" "$SOCK_DIR"
    [[ $EUID -ne 0 ]] || chown -R "$PG_USER:" "$PG_DIR"
    chmod 0700 "$PG_DIR"
    (cd "$PG_DIR" && as_pg "$bindir/initdb" -D "$DATA" -A trust -U "$PG_USER" -E UTF8 \
        --no-sync >"$PG_DIR/initdb.log" 2>&1) || {
        tail -n 20 "$PG_DIR/initdb.log" >&2
        die "initdb failed"
    }
    # `-c` options on the server command line override postgresql.conf.
    local opts="-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$SOCK_DIR"
    opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    opts+=" -c max_connections=200"
    if ! (cd "$PG_DIR" && as_pg "$bindir/pg_ctl" -D "$DATA" -l "$PG_DIR/server.log" -o "$opts" \
        -w -t 30 start >/dev/null); then
        tail -n 20 "$PG_DIR/server.log" >&2
        die "the throwaway PostgreSQL server did not start"
    fi
    local pid
    pid=$(head -n 1 "$DATA/postmaster.pid")
    {
        echo "pid=$pid"
        echo "port=$port"
        echo "data=$DATA"
        echo "bindir=$bindir"
    } >"$MARKER"
    as_pg "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$PG_USER" "$DB" ||
        die "createdb $DB failed"
    answers "$port" || die "the throwaway server on port $port does not answer"
    log "throwaway PostgreSQL up in $((SECONDS - t0))s (pid $pid, port $port, dir $PG_DIR)"
    url_for "$port"
}

cmd_stop() {
    if [[ ! -f "$MARKER" ]]; then
        return 0  # we started nothing: leave any other server alone
    fi
    local data bindir pid
    data=$(marker_field data)
    bindir=$(marker_field bindir)
    pid=$(marker_field pid)
    if [[ "$data" == "$DATA" && -f "$DATA/postmaster.pid" ]]; then
        if ! (cd "$PG_DIR" && as_pg "$bindir/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null); then
            # pg_ctl failed: fall back to the recorded postmaster pid if it is still ours.
            if [[ -n "$pid" && "$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null)" == "$pid" ]]; then
                log "pg_ctl stop failed; sending SIGQUIT to postmaster $pid"
                kill -QUIT "$pid" 2>/dev/null || true
            fi
        fi
    fi
    rm -rf "$PG_DIR"
    log "stopped the throwaway PostgreSQL (pid $pid)"
}

case "${1:-}" in
    ensure) cmd_ensure ;;
    stop) cmd_stop ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
