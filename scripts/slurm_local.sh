#!/usr/bin/env bash
# A throwaway Slurm cluster on localhost for the balsam_dask tests (DESIGN.md §7).
#
# Four virtual nodes (n1..n4, CPUs=4 each) are served by four slurmd processes on one host,
# with a private munged, and every state/spool/log/pid file under STATE_DIR.
#
# Usage: slurm_local.sh install
#        slurm_local.sh start  [STATE_DIR]   # idempotent: a healthy cluster is reused
#        slurm_local.sh stop   [STATE_DIR]   # cancels jobs, kills our daemons by pid
#        slurm_local.sh status [STATE_DIR]   # exit 0 iff munge, slurmctld and all nodes answer
#        slurm_local.sh env    [STATE_DIR]   # eval "$(slurm_local.sh env)"
#
# STATE_DIR defaults to /tmp/balsam-dask-slurm. Environment knobs:
#   BALSAM_SLURM_PORT_BASE      first port tried: slurmctld on BASE, slurmd nX on BASE+X (17000)
#   BALSAM_SLURM_START_TIMEOUT  seconds `start` waits for the nodes to be idle (30)
#
# Daemons are stopped by the pids recorded in STATE_DIR/*.pid, never by name. PID 1 on the
# machines we target does not reap orphans, so a killed daemon may linger as a zombie: liveness
# is judged from /proc/PID/stat (zombies count as dead) and from the daemons' answers.
set -euo pipefail

readonly DEFAULT_STATE_DIR=/tmp/balsam-dask-slurm
readonly NODES=(n1 n2 n3 n4)
readonly PORT_BASE_DEFAULT=${BALSAM_SLURM_PORT_BASE:-17000}
readonly START_TIMEOUT=${BALSAM_SLURM_START_TIMEOUT:-30}
readonly MUNGE_USER=munge

log() { printf 'slurm_local: %s\n' "$*" >&2; }
die() { printf 'slurm_local: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------
# install

missing_commands() {
    local cmd
    for cmd in slurmctld slurmd sbatch srun sinfo squeue scontrol scancel munged munge mungekey; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || printf '%s\n' "$cmd"
    done
}

cmd_install() {
    local missing
    missing=$(missing_commands)
    if [[ -z "$missing" ]]; then
        return 0
    fi
    log "installing slurm-wlm and munge (missing: $(echo "$missing" | tr '\n' ' '))"
    [[ $EUID -eq 0 ]] || die "installing packages needs root"
    local aptlog policy_created=0
    aptlog=$(mktemp /tmp/slurm_local-apt.XXXXXX)
    # Keep the packages' init scripts from starting system-wide daemons while we install.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    apt_install() {
        apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$aptlog" 2>&1
    }
    if ! apt_install; then
        log "apt-get install failed; running apt-get update and retrying"
        if ! { apt-get update -q >>"$aptlog" 2>&1 && apt_install; }; then
            rc=1
        fi
    fi
    if ((policy_created)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    if ((rc)); then
        tail -n 20 "$aptlog" >&2
        die "could not install slurm-wlm/munge (full log: $aptlog)"
    fi
    rm -f "$aptlog"
    missing=$(missing_commands)
    [[ -z "$missing" ]] || die "still missing after install: $(echo "$missing" | tr '\n' ' ')"
    log "installed $(slurmctld -V 2>/dev/null || echo slurm)"
}

# ---------------------------------------------------------------------------------------------
# helpers

set_paths() {
    S=${1:-$DEFAULT_STATE_DIR}
    [[ "$S" == /* ]] || S="$PWD/$S"
    S=${S%/}
    CONF="$S/slurm.conf"
    MUNGE_DIR="$S/munge"
    MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
    LOG_DIR="$S/log"
    MARKER="BALSAM_DASK_SLURM_STATE=$S"
    export PATH="$PATH:/usr/sbin:/sbin"
}

# True if PID exists and is not a zombie (dead-but-unreaped daemons linger as zombies here).
pid_alive() {
    local pid=$1 line rest
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    line=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    rest=${line##*) }
    [[ "${rest%% *}" != Z ]]
}

# True if PID is alive and its command line mentions our STATE_DIR (guards against pid reuse).
pid_is_ours() {
    local pid=$1
    pid_alive "$pid" || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$S/"
}

read_pid() { cat "$S/$1.pid" 2>/dev/null || true; }

daemon_names() { printf '%s\n' munged slurmctld; printf 'slurmd-%s\n' "${NODES[@]}"; }

port_in_use() {
    local port=$1
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Htan exclude time-wait "( sport = :$port )" 2>/dev/null)" ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

pick_port_base() {
    local base=$PORT_BASE_DEFAULT try i busy
    for ((try = 0; try < 50; try++)); do
        busy=0
        for ((i = 0; i <= ${#NODES[@]}; i++)); do
            if port_in_use $((base + i)); then
                busy=1
                break
            fi
        done
        if ((!busy)); then
            echo "$base"
            return 0
        fi
        base=$((base + 10))
    done
    die "no free block of $((${#NODES[@]} + 1)) TCP ports found from $PORT_BASE_DEFAULT"
}

# Run a Slurm client against our config, bounded in time so a dead slurmctld cannot hang us.
sl() { SLURM_CONF="$CONF" timeout 15 "$@"; }

munge_ok() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

ctld_ok() { [[ -f "$CONF" ]] && sl scontrol ping 2>/dev/null | grep -q 'is UP'; }

# Number of our nodes whose state (without any suffix flag) is in the given regex.
nodes_in_state() {
    local re=$1
    sl sinfo -h -N -p debug -o '%N %T' 2>/dev/null | awk -v re="^($re)\$" '$2 ~ re {print $1}' |
        sort -u | wc -l
}

healthy() {
    munge_ok && ctld_ok && (($(nodes_in_state 'idle|mixed|allocated|completing') == ${#NODES[@]}))
}

# Process ids of our leftover processes and their descendants: anything whose environment
# carries our marker (set only on the daemons we launch), and every slurmstepd of this cluster
# (slurmd wipes the environment of its slurmstepds except for SLURM_CONF=<our conf>). This finds
# the slurmstepd processes, and the job processes under them, that outlive their slurmd.
marked_pids() {
    local f pid env seeds=()
    for f in /proc/[0-9]*/environ; do
        pid=${f#/proc/}
        pid=${pid%/environ}
        [[ $pid -eq $$ || $pid -eq $BASHPID ]] && continue
        env=$(tr '\0' '\n' 2>/dev/null <"$f") || continue
        if grep -qxF -- "$MARKER" <<<"$env" ||
            { [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == slurmstepd ]] &&
                grep -qxF -- "SLURM_CONF=$CONF" <<<"$env"; }; then
            pid_alive "$pid" && seeds+=("$pid")
        fi
    done
    ((${#seeds[@]})) || return 0
    # Walk the process tree (pid -> ppid) to add descendants.
    ps -e -o pid=,ppid= | awk -v seeds="${seeds[*]}" '
        { parent[$1] = $2; order[NR] = $1 }
        END {
            n = split(seeds, s, " "); for (i = 1; i <= n; i++) keep[s[i]] = 1
            changed = 1
            while (changed) {
                changed = 0
                for (i = 1; i <= NR; i++) {
                    p = order[i]
                    if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
                }
            }
            for (p in keep) print p
        }'
}

# kill_pids SIGNAL_TIMEOUT PID...: SIGTERM, wait up to SIGNAL_TIMEOUT s, then SIGKILL.
kill_pids() {
    local wait_s=$1 pid deadline left
    shift
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    deadline=$((SECONDS + wait_s))
    while ((SECONDS < deadline)); do
        left=0
        for pid in "$@"; do pid_alive "$pid" && left=1; done
        ((left)) || return 0
        sleep 0.1
    done
    for pid in "$@"; do
        if pid_alive "$pid"; then
            log "pid $pid ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# launch NAME CMD...: start CMD detached in its own session, record its pid in NAME.pid.
launch() {
    local name=$1 pid
    shift
    # Run from STATE_DIR so that neither the daemons nor their slurmstepds pin the caller's cwd.
    (cd "$S" && exec env "$MARKER" SLURM_CONF="$CONF" setsid "$@" </dev/null \
        >>"$LOG_DIR/$name.out" 2>&1) &
    pid=$!
    echo "$pid" >"$S/$name.pid"
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.1
    done
}

show_logs() {
    local f
    for f in "$LOG_DIR"/*; do
        [[ -s "$f" ]] || continue
        printf -- '----- %s (last 15 lines)\n' "$f" >&2
        tail -n 15 "$f" >&2
    done
}

# ---------------------------------------------------------------------------------------------
# configuration

write_munge_files() {
    mkdir -p "$MUNGE_DIR"
    if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
        rm -f "$MUNGE_DIR/munge.key"
        mungekey --create --keyfile="$MUNGE_DIR/munge.key" >/dev/null
    fi
    if [[ $EUID -eq 0 ]]; then
        id -u "$MUNGE_USER" >/dev/null 2>&1 || die "user '$MUNGE_USER' is missing (run: $0 install)"
        chown -R "$MUNGE_USER:$MUNGE_USER" "$MUNGE_DIR"
    fi
    chmod 0755 "$MUNGE_DIR"
    chmod 0600 "$MUNGE_DIR/munge.key"
}

write_conf() {
    local base=$1 nmax=${#NODES[@]} user
    user=$(id -un)
    cat >"$CONF" <<EOF
# Generated by scripts/slurm_local.sh: a throwaway cluster of ${nmax} virtual nodes on localhost.
ClusterName=balsamdask
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=${base}
SlurmdPort=$((base + 1))
SlurmUser=${user}
SlurmdUser=${user}

AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${MUNGE_SOCKET}

StateSaveLocation=${S}/state
SlurmdSpoolDir=${S}/spool/%n
SlurmctldPidFile=${S}/run/slurmctld.pid
SlurmdPidFile=${S}/run/slurmd-%n.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true

ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2

# Short timers so tests run fast.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1,batch_sched_delay=0,sched_min_interval=100000
MessageTimeout=5
TCPTimeout=2
SlurmctldTimeout=10
SlurmdTimeout=30
InactiveLimit=10
KillWait=2
MinJobAge=60
OverTimeLimit=0
BatchStartTimeout=10
CompleteWait=0
UnkillableStepTimeout=30

# CPUs=4 is virtual (config_overrides); memory is not a consumable resource (CR_Core).
NodeName=n[1-${nmax}] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$((base + 1))-$((base + nmax))] CPUs=4 RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=n[1-${nmax}] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# ---------------------------------------------------------------------------------------------
# start / stop / status / env

cmd_start() {
    set_paths "${1:-}"
    if [[ -f "$CONF" ]] && healthy; then
        log "cluster in $S is already running; reusing it"
        return 0
    fi
    if [[ -n "$(missing_commands)" ]]; then
        die "Slurm/munge binaries missing: run '$0 install' first"
    fi
    if compgen -G "$S/*.pid" >/dev/null; then
        log "found a partial cluster in $S; stopping it first"
        cmd_stop "$S"
    fi

    local t0=$SECONDS base name node
    rm -rf "$S/state" "$S/spool" "$S/run" "$MUNGE_SOCKET" "$MUNGE_SOCKET".lock "$LOG_DIR"
    mkdir -p "$S" "$S/state" "$S/run" "$LOG_DIR"
    for node in "${NODES[@]}"; do mkdir -p "$S/spool/$node"; done
    base=$(pick_port_base)
    write_munge_files
    write_conf "$base"

    # 1. munged, as the munge user (slurmds that start before it never register).
    local munge_cmd=(munged -F --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key"
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log"
        --seed-file="$MUNGE_DIR/munged.seed")
    if [[ $EUID -eq 0 ]]; then
        launch munged setpriv --reuid="$MUNGE_USER" --regid="$MUNGE_USER" --init-groups \
            "${munge_cmd[@]}"
    else
        launch munged "${munge_cmd[@]}"
    fi
    if ! wait_for 10 munged munge_ok; then
        cat "$MUNGE_DIR/munged.log" >&2 2>/dev/null || true
        show_logs
        cmd_stop "$S"
        die "munged did not come up"
    fi

    # 2. slurmctld.
    launch slurmctld slurmctld -D -f "$CONF"
    if ! wait_for 15 slurmctld ctld_ok; then
        show_logs
        cmd_stop "$S"
        die "slurmctld did not come up"
    fi

    # 3. one slurmd per virtual node.
    for node in "${NODES[@]}"; do
        launch "slurmd-$node" slurmd -D -N "$node" -f "$CONF"
    done
    all_idle() { (($(nodes_in_state idle) == ${#NODES[@]})); }
    if ! wait_for "$START_TIMEOUT" "all ${#NODES[@]} nodes idle" all_idle; then
        sl sinfo -N -l >&2 || true
        show_logs
        cmd_stop "$S"
        die "the nodes did not become idle within ${START_TIMEOUT}s"
    fi
    for name in $(daemon_names); do
        pid_is_ours "$(read_pid "$name")" || die "$name (pid $(read_pid "$name")) is not running"
    done
    log "cluster up in $((SECONDS - t0))s: ${#NODES[@]} nodes, slurmctld port $base," \
        "SLURM_CONF=$CONF"
}

cmd_stop() {
    set_paths "${1:-}"
    local name pid jobs=() daemons=() stray=()

    # Cancel every job first so slurmd can clean up its steps.
    if [[ -f "$CONF" ]] && ctld_ok; then
        mapfile -t jobs < <(sl squeue -h -o %i 2>/dev/null || true)
        if ((${#jobs[@]})); then
            sl scancel "${jobs[@]}" 2>/dev/null || true
            no_active_jobs() { [[ -z "$(sl squeue -h -t R,CG,PD,CF,S -o %i 2>/dev/null)" ]]; }
            wait_for 15 "jobs to be cancelled" no_active_jobs || true
        fi
    fi

    # Daemons, in reverse start order: slurmds, slurmctld, munged.
    for name in $(daemon_names | tac); do
        pid=$(read_pid "$name")
        [[ -n "$pid" ]] || continue
        if pid_is_ours "$pid"; then
            daemons+=("$pid")
            kill_pids 10 "$pid"
        fi
    done

    # Whatever our daemons left behind (slurmstepd and job processes), found by environment marker.
    mapfile -t stray < <(marked_pids)
    if ((${#stray[@]})); then
        log "killing ${#stray[@]} leftover process(es): ${stray[*]}"
        kill_pids 3 "${stray[@]}"
    fi

    rm -rf "$S"/*.pid "$S/run" "$S/spool" "$S/state" "$MUNGE_SOCKET" "$MUNGE_SOCKET".lock \
        "$MUNGE_DIR/munged.pid"
    if ((${#daemons[@]})); then
        log "stopped ${#daemons[@]} daemon(s) in $S (logs kept in $LOG_DIR)"
    fi
}

cmd_status() {
    set_paths "${1:-}"
    local name pid state rc=0
    for name in $(daemon_names); do
        pid=$(read_pid "$name")
        if [[ -z "$pid" ]]; then
            state="not started"
        elif pid_is_ours "$pid"; then
            state="running (pid $pid)"
        else
            state="dead (pid $pid)"
        fi
        printf '%-12s %s\n' "$name" "$state"
    done
    if munge_ok; then echo "munge: ok ($MUNGE_SOCKET)"; else echo "munge: not answering"; rc=1; fi
    if ctld_ok; then
        echo "slurmctld: $(sl scontrol ping 2>/dev/null | head -n 1)"
        sl sinfo -N -o '%N %T %c %P' 2>/dev/null || true
        if (($(nodes_in_state 'idle|mixed|allocated|completing') != ${#NODES[@]})); then
            rc=1
        fi
    else
        echo "slurmctld: not answering"
        rc=1
    fi
    return "$rc"
}

cmd_env() {
    set_paths "${1:-}"
    [[ -f "$CONF" ]] || log "warning: $CONF does not exist yet (run: $0 start $S)"
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

main() {
    (($#)) || usage
    local sub=$1
    shift
    (($# <= 1)) || usage
    case "$sub" in
        install) cmd_install ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        env) cmd_env "$@" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
