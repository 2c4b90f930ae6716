#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/start_slurm.sh (by the PIDs it recorded)
# and remove its state folder unless KEEP_SLURM_STATE=1.
#
#   bash scripts/stop_slurm.sh [STATE_DIR]        # default /tmp/bidsfm-slurm
set -uo pipefail
STATE=$(realpath -m "${1:-${BIDSFM_SLURM_DIR:-/tmp/bidsfm-slurm}}")
[ -d "$STATE" ] || { echo "stop_slurm: no cluster state in $STATE" >&2; exit 0; }

# cancel this cluster's jobs first, so no job step outlives the daemons
if [ -f "$STATE/slurm.conf" ] && command -v squeue > /dev/null; then
  export SLURM_CONF=$STATE/slurm.conf
  jobs=$(timeout 5 squeue -h -o '%A' 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    timeout 5 scancel $jobs 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(timeout 5 squeue -h -o '%A' 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

pids=()
if [ -f "$STATE/pids" ]; then
  while read -r _name pid; do
    [ -n "$pid" ] && pids+=("$pid")
  done < "$STATE/pids"
fi
MUNGE=""
[ -f "$STATE/munge_dir" ] && MUNGE=$(cat "$STATE/munge_dir")
if [ -n "$MUNGE" ] && [ -f "$MUNGE/munged.pid" ]; then
  pids+=("$(cat "$MUNGE/munged.pid")")
fi
for pid in "${pids[@]}"; do
  kill -TERM "$pid" 2>/dev/null || true
done
for _ in $(seq 50); do
  alive=0
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && alive=1
  done
  [ "$alive" = 0 ] && break
  sleep 0.1
done
for pid in "${pids[@]}"; do
  kill -KILL "$pid" 2>/dev/null || true
done
# job steps are children of slurmstepd, which exits with slurmd; nothing else was started
rm -f "$STATE/pids"
case "$MUNGE" in /tmp/bidsfm-munge.*) rm -rf "$MUNGE" ;; esac
if [ "${KEEP_SLURM_STATE:-0}" != 1 ]; then
  rm -rf "$STATE"
fi
