#!/usr/bin/env bash
# Start a private one-node Slurm cluster (munged, slurmctld, slurmd) for the cluster tests.
#
#   tests/cluster/start-slurm.sh [STATE_DIR]      default: $MEDCLASSIFY_SLURM_DIR or /tmp/medclassify-slurm
#
# Installs Debian's slurm-wlm and munge when they are missing (needs root, as in CI), writes
# slurm.conf, gres.conf and a munge key into STATE_DIR, starts the three daemons by hand (no
# systemd here; Debian's policy-rc.d keeps apt from starting them) and records their PIDs in
# STATE_DIR/pids, so that stop-slurm.sh ends exactly these processes and nothing else.
# Clients find the cluster through SLURM_CONF (`source STATE_DIR/env.sh`) and through a link
# /etc/slurm/slurm.conf -> STATE_DIR/slurm.conf: inside a job, snakemake-executor-plugin-slurm's
# job step drops every SLURM_* variable (SLURM_CONF included) before it calls srun, so srun only
# finds the configuration at the standard place, as on a real cluster. An /etc/slurm/slurm.conf
# that is not such a link is never replaced.
#
# The node has one stand-in GPU (gres.conf: File=/dev/null): `sbatch --gpus=1` schedules and the
# job sees CUDA_VISIBLE_DEVICES=0, which is all the Snakemake Slurm profile needs to be tested.
# There is no slurmdbd, so sacct does not work; the profile's status checks use squeue, and
# MinJobAge=300 keeps finished jobs visible to squeue long enough for them.
set -euo pipefail

STATE_DIR="$(realpath -m "${1:-${MEDCLASSIFY_SLURM_DIR:-/tmp/medclassify-slurm}}")"
CLUSTER_NAME="medclassify-test"
SLURMCTLD_PORT="${MEDCLASSIFY_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${MEDCLASSIFY_SLURMD_PORT:-6818}"
STARTUP_TIMEOUT_S=60

log() { echo "start-slurm: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    [[ $(id -u) -eq 0 ]] || die "slurm-wlm and munge are missing; run as root to install them"
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    # Another apt run (a parallel job, unattended-upgrades) may hold the lock for a while.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        slurm-wlm munge >/dev/null
}

pid_alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

already_running() {
    [[ -f "$STATE_DIR/pids" ]] || return 1
    local name pid
    while read -r name pid; do
        pid_alive "$pid" || return 1
    done <"$STATE_DIR/pids"
    SLURM_CONF="$STATE_DIR/slurm.conf" sinfo -h >/dev/null 2>&1
}

# The node line comes from the machine itself (CPUs, sockets, memory) so the config never lies
# about the hardware; slurmd -C also prints an UpTime line that slurm.conf must not contain.
node_line() {
    local detected
    detected="$(slurmd -C | grep '^NodeName=')" || die "slurmd -C printed no node line"
    echo "$detected NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN"
}

write_config() {
    local host="$1"
    cat >"$STATE_DIR/slurm.conf" <<EOF
# Written by tests/cluster/start-slurm.sh for the medclassify cluster tests. One node, no
# accounting database, a stand-in GPU. Not a template for a production cluster.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE_DIR/munge/munge.socket
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in this container: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that names no memory must not take the whole node.
DefMemPerCPU=1000
GresTypes=gpu
SchedulerType=sched/backfill
# squeue (the profile's status command) must still see a job for a while after it ends.
MinJobAge=300
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
$(node_line)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # A stand-in GPU: the scheduler counts it and sets CUDA_VISIBLE_DEVICES, nothing more.
    cat >"$STATE_DIR/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=/dev/null
EOF
    cat >"$STATE_DIR/env.sh" <<EOF
# source this file to use the test cluster
export SLURM_CONF=$STATE_DIR/slurm.conf
export MEDCLASSIFY_SLURM_DIR=$STATE_DIR
EOF
}

start_munge() {
    mkdir -p "$STATE_DIR/munge"
    chmod 0700 "$STATE_DIR/munge"
    if [[ ! -f "$STATE_DIR/munge/munge.key" ]]; then
        # A fresh private key: this cluster trusts nobody else's credentials.
        head -c 1024 /dev/urandom >"$STATE_DIR/munge/munge.key"
        chmod 0400 "$STATE_DIR/munge/munge.key"
    fi
    munged --force \
        --key-file="$STATE_DIR/munge/munge.key" \
        --socket="$STATE_DIR/munge/munge.socket" \
        --pid-file="$STATE_DIR/munge/munged.pid" \
        --seed-file="$STATE_DIR/munge/munged.seed" \
        --log-file="$STATE_DIR/log/munged.log" \
        </dev/null >>"$STATE_DIR/log/start.log" 2>&1
    wait_for_file "$STATE_DIR/munge/munged.pid" munged
    echo "munged $(cat "$STATE_DIR/munge/munged.pid")" >>"$STATE_DIR/pids"
}

wait_for_file() {
    local path="$1" what="$2" waited=0
    until [[ -s "$path" ]]; do
        ((waited++ < STARTUP_TIMEOUT_S * 10)) || die "$what did not start; see $STATE_DIR/log/"
        sleep 0.1
    done
}

start_slurm_daemons() {
    export SLURM_CONF="$STATE_DIR/slurm.conf"
    # -c: clear the job state of an earlier run of this cluster: a test cluster starts empty.
    slurmctld -c -f "$SLURM_CONF" </dev/null >>"$STATE_DIR/log/start.log" 2>&1
    wait_for_file "$STATE_DIR/slurmctld.pid" slurmctld
    echo "slurmctld $(cat "$STATE_DIR/slurmctld.pid")" >>"$STATE_DIR/pids"
    slurmd -f "$SLURM_CONF" </dev/null >>"$STATE_DIR/log/start.log" 2>&1
    wait_for_file "$STATE_DIR/slurmd.pid" slurmd
    echo "slurmd $(cat "$STATE_DIR/slurmd.pid")" >>"$STATE_DIR/pids"
}

check_daemons_alive() {
    local name pid
    while read -r name pid; do
        pid_alive "$pid" || die "$name ($pid) died: $(tail -n 3 "$STATE_DIR/log/$name.log" 2>/dev/null)"
    done <"$STATE_DIR/pids"
}

wait_until_idle() {
    local waited=0 state=""
    while ((waited++ < STARTUP_TIMEOUT_S)); do
        check_daemons_alive
        state="$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)"
        if [[ "$state" == idle* || "$state" == mixed* ]]; then
            return
        fi
        sleep 1
    done
    die "the node is '${state:-unreachable}' after ${STARTUP_TIMEOUT_S}s; see $STATE_DIR/log/"
}

SYSTEM_CONF=/etc/slurm/slurm.conf

link_system_config() {
    if [[ -L "$SYSTEM_CONF" ]]; then
        local target
        target="$(readlink "$SYSTEM_CONF")"
        grep -q "^# Written by tests/cluster/start-slurm.sh" "$target" 2>/dev/null \
            || die "$SYSTEM_CONF links to $target, which is not a test cluster's; not touching it"
        if [[ "$target" != "$STATE_DIR/slurm.conf" && -f "$(dirname "$target")/pids" ]]; then
            die "another test cluster ($(dirname "$target")) is running; stop it first"
        fi
    elif [[ -e "$SYSTEM_CONF" ]]; then
        die "$SYSTEM_CONF is a real Slurm configuration; not touching it"
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$STATE_DIR/slurm.conf" "$SYSTEM_CONF"
}

main() {
    install_packages
    if already_running; then
        log "already running (state in $STATE_DIR)"
        echo "$STATE_DIR/env.sh"
        return
    fi
    if [[ -f "$STATE_DIR/pids" ]]; then
        log "a previous cluster in $STATE_DIR is partly down; stopping what is left of it"
        "$(dirname "$0")/stop-slurm.sh" "$STATE_DIR"
    fi
    mkdir -p "$STATE_DIR"/{log,slurmctld,slurmd}
    chmod 0755 "$STATE_DIR"
    rm -f "$STATE_DIR"/pids "$STATE_DIR"/*.pid "$STATE_DIR"/munge/munged.pid
    write_config "$(hostname -s)"
    link_system_config
    local started=$SECONDS
    # Whatever started before a failure is stopped again, so that a failed start leaves nothing.
    trap '"$(dirname "$0")/stop-slurm.sh" "$STATE_DIR"' EXIT
    start_munge
    start_slurm_daemons
    wait_until_idle
    trap - EXIT
    log "up in $((SECONDS - started))s: $(sinfo -h -N -o '%N %T cpus=%c mem=%m gres=%G')"
    echo "$STATE_DIR/env.sh"
}

main "$@"
