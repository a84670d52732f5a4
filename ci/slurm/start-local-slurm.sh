#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine, by hand (no systemd), for tests.
#
#   bash ci/slurm/start-local-slurm.sh        # idempotent: does nothing if sinfo already shows the node idle
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge (--no-install-recommends) when
# missing, writes /etc/slurm/slurm.conf for this host (unless a slurm.conf not written by this
# script is already there), starts munged, slurmctld and slurmd, and waits until `sinfo` shows
# the node idle. Jobs share the node (select/cons_tres, CR_Core_Memory, DefMemPerCPU); every
# finished job is appended to the job-completion log (JobCompLoc, `sacct -c` reads it).
# Needs root (or passwordless sudo). Exit status 0 when the node is idle, 1 otherwise.
set -euo pipefail

MARK="# written by ci/slurm/start-local-slurm.sh"
CONF=/etc/slurm/slurm.conf
JOBCOMP_LOG=/var/log/slurm/jobcomp.log
WAIT_S=${SLURM_START_TIMEOUT:-90}

log() { echo "start-local-slurm: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n -E bash "$0" "$@"
    fi
    log "needs root (or passwordless sudo) to install and start SLURM"
    exit 1
fi

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n1; }

if command -v sinfo >/dev/null && [[ "$(node_state)" == idle* || "$(node_state)" == mix* ]]; then
    log "SLURM is already up: $(sinfo -h -N -o '%N %t %c CPUs %m MB')"
    exit 0
fi

# --- packages -------------------------------------------------------------------------------
missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d stops the packages' init scripts from trying to start services
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    }
fi

# --- munge ----------------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || { log "munged does not work"; exit 1; }
fi

# --- slurm.conf -----------------------------------------------------------------------------
host=$(hostname -s)
if [ ! -f "$CONF" ] || head -n1 "$CONF" | grep -qxF "$MARK"; then
    # the hardware line as slurmd sees it; leave 10 % of the memory to the system
    hw=$(slurmd -C | head -n1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(( mem * 9 / 10 ))
    hw=$(sed -e "s/RealMemory=[0-9]*/RealMemory=$mem/" -e "s/^NodeName=[^ ]*/NodeName=$host/" <<<"$hw")
    mkdir -p /etc/slurm
    cat >"$CONF.tmp" <<EOF
$MARK
ClusterName=csttool-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP_LOG
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$hw NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.tmp" "$CONF"
    log "wrote $CONF ($hw)"
else
    log "keeping the existing $CONF (not written by this script)"
fi
mkdir -p /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
touch "$JOBCOMP_LOG"

# --- daemons --------------------------------------------------------------------------------
running() { local f=$1; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
if ! scontrol ping 2>/dev/null | grep -q "is UP"; then
    if running /run/slurm/slurmctld.pid; then
        log "slurmctld is running but does not answer; restarting it"
        kill "$(cat /run/slurm/slurmctld.pid)" || true
        sleep 2
    fi
    log "starting slurmctld"
    /usr/sbin/slurmctld
    for _ in $(seq 40); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.5; done
fi
if ! running /run/slurm/slurmd.pid; then
    log "starting slurmd"
    /usr/sbin/slurmd
fi

# --- wait for the node ----------------------------------------------------------------------
deadline=$(( $(date +%s) + WAIT_S ))
while :; do
    state=$(node_state || true)
    case "$state" in
        idle*|mix*) break ;;
        down*|drain*|drng*|fail*)
            scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "node not idle after ${WAIT_S}s (state: ${state:-unknown}); see /var/log/slurm/slurm{ctld,d}.log"
        exit 1
    fi
    sleep 1
done
log "SLURM is up: $(sinfo -h -N -o '%N %t %c CPUs %m MB'); job completion log $JOBCOMP_LOG"
