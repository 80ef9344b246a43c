#!/usr/bin/env bash
# Stop the test cluster that start-slurm.sh started: only the PIDs it recorded in STATE_DIR/pids.
#
#   tests/cluster/stop-slurm.sh [STATE_DIR]       default: $MEDCLASSIFY_SLURM_DIR or /tmp/medclassify-slurm
#
# Jobs still running on the cluster are cancelled first (they are children of slurmstepd, which
# slurmd started). A PID that now belongs to another program is left alone: each recorded PID is
# checked against the daemon's name before it is signalled.
set -uo pipefail

STATE_DIR="$(realpath -m "${1:-${MEDCLASSIFY_SLURM_DIR:-/tmp/medclassify-slurm}}")"
GRACE_S=10

log() { echo "stop-slurm: $*" >&2; }

if [[ ! -f "$STATE_DIR/pids" ]]; then
    log "nothing to stop: no $STATE_DIR/pids"
    exit 0
fi

if [[ -f "$STATE_DIR/slurm.conf" ]] && command -v scancel >/dev/null; then
    SLURM_CONF="$STATE_DIR/slurm.conf" scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
fi

# Stop in reverse start order: slurmd, slurmctld, then munged (which the others talk to).
mapfile -t entries < <(tac "$STATE_DIR/pids")
for entry in "${entries[@]}"; do
    read -r name pid <<<"$entry"
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) is not running"
        continue
    fi
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]]; then
        log "PID $pid is no longer $name; leaving it alone"
        continue
    fi
    kill -TERM "$pid"
    for ((i = 0; i < GRACE_S * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) ignored SIGTERM for ${GRACE_S}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name ($pid)"
done
rm -f "$STATE_DIR/pids"
# The link start-slurm.sh made for srun inside jobs; a real configuration is never removed.
if [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" == "$STATE_DIR/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
fi
