#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster (munged + slurmctld + slurmd) for tests and demos.
#
#   bash scripts/start_slurm.sh [STATE_DIR]       # default /tmp/bidsfm-slurm
#   export SLURM_CONF=STATE_DIR/slurm.conf        # then sbatch/squeue/scontrol talk to it
#   bash scripts/stop_slurm.sh [STATE_DIR]
#
# Config, spool, logs and PIDs live under STATE_DIR, munge's key and socket in /tmp/bidsfm-munge.*; nothing in
# /etc is changed. Needs root and Debian's slurm-wlm + munge packages; no systemd, no cgroups
# (proctrack/linuxproc, task/none), no accounting. The node's CPUs and memory come from
# `slurmd -C`; the daemons listen on 127.0.0.1, ports SLURM_CTLD_PORT (6817) and
# SLURMD_PORT (6818). Prints `export SLURM_CONF=...` on success; exits 1 with a one-line
# message (and the last log lines) when the node is not idle within SLURM_START_TIMEOUT (30) s.
set -euo pipefail
STATE=$(realpath -m "${1:-${BIDSFM_SLURM_DIR:-/tmp/bidsfm-slurm}}")
CTLD_PORT=${SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
TIMEOUT=${SLURM_START_TIMEOUT:-30}

fail() { echo "start_slurm: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "must run as root (munged runs as the munge user, slurmd as root)"
for exe in munged slurmctld slurmd sinfo setpriv; do
  command -v "$exe" > /dev/null || fail "$exe not found; install Debian's slurm-wlm and munge"
done
getent passwd munge > /dev/null || fail "no 'munge' user; install Debian's munge package"
if [ -f "$STATE/pids" ]; then
  fail "$STATE/pids exists: a cluster may already run there (bash scripts/stop_slurm.sh $STATE)"
fi

mkdir -p "$STATE"/{ctld,spool,log}
chmod 755 "$STATE"
# munge refuses loose permissions and the munge user must reach its files, so they live in
# their own short /tmp folder (STATE may sit under a private 0700 parent; socket paths are
# limited to 108 bytes): the key 0400 in a 0700 folder, the socket's folder 0755, all owned by
# the munge user. Its path is recorded in STATE/munge_dir for stop_slurm.sh.
MUNGE=$(mktemp -d /tmp/bidsfm-munge.XXXXXX)
echo "$MUNGE" > "$STATE/munge_dir"
mkdir -p "$MUNGE/private"
mungekey --create --keyfile "$MUNGE/private/munge.key" --force > /dev/null 2>&1 \
  || dd if=/dev/urandom of="$MUNGE/private/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$MUNGE"
chmod 755 "$MUNGE"
chmod 700 "$MUNGE/private"
chmod 400 "$MUNGE/private/munge.key"
setpriv --reuid=munge --regid=munge --init-groups munged \
  --key-file="$MUNGE/private/munge.key" --socket="$MUNGE/munge.socket" \
  --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" \
  --seed-file="$MUNGE/private/munged.seed" \
  || fail "munged did not start: $(tail -1 "$MUNGE/munged.log" 2>/dev/null)"

node=$(hostname -s)
layout=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
cat > "$STATE/slurm.conf" <<EOF
# single-node test cluster written by bidsfm scripts/start_slurm.sh
ClusterName=bidsfm
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 $layout State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$STATE/slurm.conf

slurmctld -D -i -f "$SLURM_CONF" > "$STATE/log/slurmctld.out" 2>&1 &
echo "slurmctld $!" > "$STATE/pids"
slurmd -D -N "$node" -f "$SLURM_CONF" > "$STATE/log/slurmd.out" 2>&1 &
echo "slurmd $!" >> "$STATE/pids"

deadline=$(( $(date +%s) + TIMEOUT ))
until [ "$(sinfo -h -n "$node" -o '%t' 2>/dev/null)" = idle ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "start_slurm: node $node not idle after $TIMEOUT s (sinfo: $(sinfo -h -o '%t' 2>&1))" >&2
    tail -n 3 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 2>/dev/null || true
    exit 1
  fi
  sleep 0.5
done
echo "export SLURM_CONF=$SLURM_CONF"
