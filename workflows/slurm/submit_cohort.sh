#!/usr/bin/env bash
# Submit a cohort to SLURM: one bidsfm participant job per array task, then the group level as a
# job that starts only after every task has finished (--dependency=afterok:<array id>).
#
#   submit_cohort.sh [options] BIDS_DIR OUTPUT_DIR
#
# Options:
#   -p, --participants FILE|LABELS  participants.tsv (participant_id column), a file with one
#                                   label per line, or a comma/space-separated list of labels.
#                                   Default: BIDS_DIR/participants.tsv, else the sub-* folders.
#   -w, --work-dir DIR              work folder (default: OUTPUT_DIR/../bidsfm_work)
#   -c, --cmd "CMD"                 how to run bidsfm (default: $BIDSFM_CMD or "bidsfm"), e.g.
#                                   "apptainer run --nv --cleanenv -B /data bidsfm.sif"
#   -a, --bidsfm-args "ARGS"        more bidsfm options for the participant level
#   -g, --group-args "ARGS"         more bidsfm options for the group level
#   -s, --sbatch-args "ARGS"        more sbatch options for the array (e.g. "--gres=gpu:1
#                                   --partition=gpu --time=01:00:00")
#       --group-sbatch-args "ARGS"  more sbatch options for the group job
#   -m, --max-running N             at most N array tasks at once (--array=1-N%M)
#       --group-after ok|any        run the group level after all tasks succeeded (ok, default)
#                                   or after they all ended whatever their status (any)
#       --no-group                  submit only the participant array
#   -l, --log-dir DIR               where SLURM writes logs and the cohort files
#                                   (default: WORK_DIR/slurm)
#   -n, --dry-run                   print the sbatch commands instead of submitting
#   -h, --help
#
# Words in CMD and ARGS are split on whitespace (no quoting). Prints the array and group job ids.
# Resubmitting the same cohort is cheap: bidsfm skips every run whose outputs are complete.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SBATCH_SCRIPT=$HERE/bidsfm_array.sbatch

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "submit_cohort: $*" >&2; exit 2; }

participants="" work="" cmd=${BIDSFM_CMD:-bidsfm} bargs="" gargs="" sargs="" gsargs=""
max_running="" group_after=ok group=1 logdir="" dry=0
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    -p|--participants) participants=${2?}; shift 2 ;;
    -w|--work-dir) work=${2?}; shift 2 ;;
    -c|--cmd) cmd=${2?}; shift 2 ;;
    -a|--bidsfm-args) bargs=${2?}; shift 2 ;;
    -g|--group-args) gargs=${2?}; shift 2 ;;
    -s|--sbatch-args) sargs=${2?}; shift 2 ;;
    --group-sbatch-args) gsargs=${2?}; shift 2 ;;
    -m|--max-running) max_running=${2?}; shift 2 ;;
    --group-after) group_after=${2?}; shift 2 ;;
    --no-group) group=0; shift ;;
    -l|--log-dir) logdir=${2?}; shift 2 ;;
    -n|--dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; positional+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -eq 2 ] || die "expected BIDS_DIR OUTPUT_DIR, got ${#positional[@]} argument(s) (see --help)"
bids=$(realpath -m "${positional[0]}")
out=$(realpath -m "${positional[1]}")
[ -d "$bids" ] || die "$bids: input folder not found"
case "$group_after" in ok|any) ;; *) die "--group-after must be ok or any, not '$group_after'" ;; esac
if [ -n "$max_running" ] && ! [[ "$max_running" =~ ^[1-9][0-9]*$ ]]; then
  die "--max-running must be a positive integer, not '$max_running'"
fi
work=$(realpath -m "${work:-$(dirname "$out")/bidsfm_work}")
logdir=$(realpath -m "${logdir:-$work/slurm}")

# -- participant labels -----------------------------------------------------------------------
labels=()
read_tsv() {  # participant_id column of a BIDS participants.tsv
  awk -F'\t' 'NR==1 {for (i=1; i<=NF; i++) if ($i=="participant_id") c=i; next}
              c && $c != "" {print $c}' "$1"
}
if [ -z "$participants" ] && [ -f "$bids/participants.tsv" ]; then
  participants=$bids/participants.tsv
fi
if [ -z "$participants" ]; then
  for d in "$bids"/sub-*/; do
    [ -d "$d" ] && labels+=("$(basename "$d")")
  done
elif [ -f "$participants" ]; then
  if head -1 "$participants" | tr '\t' '\n' | grep -qx participant_id; then
    mapfile -t labels < <(read_tsv "$participants")
  else
    mapfile -t labels < <(grep -v '^[[:space:]]*\(#\|$\)' "$participants")
  fi
else
  read -r -a labels <<< "${participants//,/ }"
fi
clean=()
for raw in "${labels[@]}"; do
  lab=$(printf '%s' "$raw" | tr -d '[:space:]')
  lab=${lab#sub-}
  [ -n "$lab" ] || continue
  [[ "$lab" =~ ^[A-Za-z0-9]+$ ]] || die "participant label '$raw' is not a BIDS label (letters and digits)"
  clean+=("$lab")
done
[ ${#clean[@]} -gt 0 ] || die "no participant found (${participants:-no sub-* folder in $bids})"
n=${#clean[@]}

# -- cohort files and submission --------------------------------------------------------------
stamp=$(date +%Y%m%d-%H%M%S)-$$
list=$logdir/participants-$stamp.txt
cohort=$logdir/cohort-$stamp.env
job_id=""
submit() {  # submit PLACEHOLDER SBATCH_ARGS...: print it (dry run) or run sbatch; sets job_id
  local placeholder=$1
  shift
  if [ "$dry" = 1 ]; then
    printf '%q ' sbatch "$@" | sed 's/ $//'
    echo
    job_id=$placeholder
  else
    job_id=$(sbatch "$@") || die "sbatch failed: sbatch $*"
    job_id=${job_id%%;*}  # --parsable prints "id[;cluster]"
    [[ "$job_id" =~ ^[0-9]+$ ]] || die "sbatch did not return a job id (got '$job_id')"
  fi
}
if [ "$dry" = 0 ]; then
  mkdir -p "$logdir" "$out" "$work"
  printf '%s\n' "${clean[@]}" > "$list.tmp" && mv "$list.tmp" "$list"
  {
    printf 'BIDSFM_CMD=%q\n' "$cmd"
    printf 'BIDSFM_BIDS_DIR=%q\n' "$bids"
    printf 'BIDSFM_OUTPUT_DIR=%q\n' "$out"
    printf 'BIDSFM_WORK_DIR=%q\n' "$work"
    printf 'BIDSFM_PARTICIPANTS=%q\n' "$list"
    printf 'BIDSFM_ARGS=%q\n' "$bargs"
    printf 'BIDSFM_GROUP_ARGS=%q\n' "$gargs"
  } > "$cohort.tmp" && mv "$cohort.tmp" "$cohort"
else
  echo "# dry run: $n participant(s): ${clean[*]}"
  echo "# $cohort would set BIDSFM_CMD='$cmd' BIDS_DIR=$bids OUTPUT_DIR=$out WORK_DIR=$work"
fi

array=1-$n
[ -n "$max_running" ] && array=$array%$max_running
read -r -a sextra <<< "$sargs"
read -r -a gsextra <<< "$gsargs"
submit ARRAY_JOB_ID --parsable --array="$array" --job-name=bidsfm \
  --output="$logdir/bidsfm-%A_%a.log" --export=ALL,BIDSFM_COHORT_FILE="$cohort" \
  "${sextra[@]}" "$SBATCH_SCRIPT" participant
array_id=$job_id
echo "array job $array_id: $n participant(s), logs in $logdir"
if [ "$group" = 1 ]; then
  submit GROUP_JOB_ID --parsable --job-name=bidsfm-group \
    --dependency="after$group_after:$array_id" --kill-on-invalid-dep=yes \
    --output="$logdir/bidsfm-group-%j.log" --export=ALL,BIDSFM_COHORT_FILE="$cohort" \
    "${gsextra[@]}" "$SBATCH_SCRIPT" group
  group_id=$job_id
  echo "group job $group_id: runs after$group_after:$array_id"
fi
