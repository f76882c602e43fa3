#!/usr/bin/env bash
# A one-machine SLURM cluster for the tests: scripts/slurm_local.sh up|down|status
#
# Needs root and Debian's slurm-wlm and munge packages (apt-get install slurm-wlm munge). `up`
# writes a minimal slurm.conf for this host (its name, cores and memory as slurmd measures
# them) as controller and only node of the partition "local", starts munged, slurmctld and
# slurmd as plain processes (no systemd) and waits until sinfo shows the node idle. `down` stops
# them. State, logs and pid files go to $SLURM_LOCAL_DIR (default /tmp/slurm_local).
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/tmp/slurm_local}
CONF=/etc/slurm/slurm.conf
MARK="# written by model-interface scripts/slurm_local.sh"

die() { echo "slurm_local: $*" >&2; exit 1; }

up() {
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" > /dev/null || die "$tool not found; install it: apt-get install slurm-wlm munge"
    done
    [ "$(id -u)" = 0 ] || die "run as root: slurmd starts jobs as their users"
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching a real cluster's config"
    fi
    mkdir -p "$STATE"/{state,spool} /etc/slurm /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chmod 0400 /etc/munge/munge.key
    chown root:root /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge  # munged runs as root here
    pgrep -x munged > /dev/null || munged --force

    local node
    node=$(slurmd -C | head -1)  # NodeName=<host> CPUs=... RealMemory=...
    cat > "$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$(hostname -s)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
$node
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    pgrep -x slurmctld > /dev/null || slurmctld
    pgrep -x slurmd > /dev/null || slurmd
    for _ in $(seq 60); do
        if sinfo --noheader --format=%t 2> /dev/null | grep -qx idle; then
            sinfo
            return 0
        fi
        sleep 0.5
    done
    sinfo || true
    die "the node did not come up idle in 30 s; see $STATE/slurmctld.log and $STATE/slurmd.log"
}

down() {
    for daemon in slurmd slurmctld; do
        pkill -x "$daemon" || true
    done
    for _ in $(seq 40); do
        pgrep -x slurmd > /dev/null || pgrep -x slurmctld > /dev/null || break
        sleep 0.25
    done
    pkill -x munged || true
    if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF"; then
        rm -f "$CONF"
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) sinfo ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
