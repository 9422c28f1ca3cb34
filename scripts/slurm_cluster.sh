#!/bin/sh
# A single-node Slurm cluster on this machine (controller and node daemon on localhost), for the
# `slurm`-marked tests and for trying `llm-grade batch --executor slurm` without a real cluster.
#
#   scripts/slurm_cluster.sh start   install (first time) Debian's slurm-wlm and munge, write the config,
#                                    start munged, slurmctld and slurmd, wait until the node is idle
#   scripts/slurm_cluster.sh stop    stop the three daemons
#   scripts/slurm_cluster.sh status  exit 0 when the node answers sinfo as idle or busy
#
# Needs root and apt-get (Debian/Ubuntu). Idempotent: `start` on a running cluster only checks it.
# Exit status: 0 up, 3 cannot (not root, no apt-get, install failed), 4 the daemons did not come up.
# The log of each daemon is in /var/log/slurm/ and /var/log/munge/.
set -u
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
CPUS=${LLMG_SLURM_CPUS:-$(nproc)}
NODE=$(hostname -s 2>/dev/null || hostname)
PARTITION=${LLMG_SLURM_PARTITION:-grading}

say() { echo "slurm_cluster: $*" >&2; }

up() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }

install() {
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || { say "cannot start: no apt-get on this machine"; exit 3; }
    say "installing slurm-wlm and munge with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge; } >/tmp/llmg-slurm-apt.log 2>&1 || { say "cannot start: apt-get install failed (see /tmp/llmg-slurm-apt.log)"; exit 3; }
}

write_conf() {
    mkdir -p "$CONF_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
    tmp=$(mktemp)
    cat >"$tmp" <<CONF
# Written by scripts/slurm_cluster.sh: one node, controller and slurmd on localhost.
ClusterName=llmg
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    if ! cmp -s "$tmp" "$CONF"; then mv "$tmp" "$CONF"; chmod 644 "$CONF"; CHANGED=1; else rm -f "$tmp"; fi
    # cgroup.conf is read by slurmd even with proctrack/linuxproc on some builds: keep it harmless.
    [ -f "$CONF_DIR/cgroup.conf" ] || echo "CgroupPlugin=autodetect" >"$CONF_DIR/cgroup.conf"
}

running() { pgrep -x "$1" >/dev/null 2>&1; }

start_munge() {
    running munged && munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    if id munge >/dev/null 2>&1; then
        chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge; chmod 400 /etc/munge/munge.key
        runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
    else
        chmod 400 /etc/munge/munge.key; /usr/sbin/munged --force
    fi
}

start() {
    [ "$(id -u)" = 0 ] || { say "cannot start: needs root (it installs packages and runs the daemons)"; exit 3; }
    if command -v sinfo >/dev/null 2>&1 && up; then say "already running: node $NODE, partition $PARTITION"; return 0; fi
    install
    CHANGED=0
    write_conf
    start_munge || { say "munged did not start (see /var/log/munge/)"; exit 4; }
    if [ "$CHANGED" = 1 ] && running slurmctld; then stop_daemons; fi
    running slurmctld || /usr/sbin/slurmctld -i || { say "slurmctld did not start (see /var/log/slurm/slurmctld.log)"; exit 4; }
    running slurmd || /usr/sbin/slurmd -b || { say "slurmd did not start (see /var/log/slurm/slurmd.log)"; exit 4; }
    i=0
    while [ $i -lt 60 ]; do
        if up; then say "up: node $NODE ($CPUS CPUs), partition $PARTITION"; return 0; fi
        state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null)
        case "$state" in down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 ;; esac
        i=$((i + 1)); sleep 1
    done
    say "the node did not become idle in 60 s (sinfo: $(sinfo -h -N 2>&1 | head -1)); see /var/log/slurm/"
    exit 4
}

stop_daemons() {
    for d in slurmd slurmctld; do
        pidf=/run/$d.pid
        if [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null; then :; fi
    done
    i=0; while { running slurmd || running slurmctld; } && [ $i -lt 20 ]; do i=$((i + 1)); sleep 0.5; done
}

case "${1:-start}" in
    start) start ;;
    stop)
        stop_daemons
        pidf=/run/munge/munged.pid; [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null
        say "stopped" ;;
    status) command -v sinfo >/dev/null 2>&1 && up ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
