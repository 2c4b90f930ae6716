#!/usr/bin/env bash
# Chain fMRIPrep -> bidsfm for the same participants, one participant at a time: fMRIPrep's
# participant level, then (only if it succeeded) bidsfm's on fMRIPrep's output.
#
#   fmriprep_then_bidsfm.sh [options] BIDS_DIR OUT_DIR [LABEL ...]
#
# fMRIPrep writes OUT_DIR/fmriprep, bidsfm writes OUT_DIR/bidsfm; work folders are
# WORK_DIR/fmriprep and WORK_DIR/bidsfm. Without LABELs every participant of
# BIDS_DIR/participants.tsv (or every sub-* folder) is processed. Run it inside one SLURM job per
# participant (e.g. `sbatch --array` with LABEL from a list) or on a workstation.
#
# Options:
#   --fmriprep-cmd "CMD"   how to run fMRIPrep (default: $FMRIPREP_CMD or "fmriprep"), e.g.
#                          "apptainer run --cleanenv -B /data fmriprep-24.1.1.sif"
#   --bidsfm-cmd "CMD"     how to run bidsfm (default: $BIDSFM_CMD or "bidsfm")
#   --fmriprep-args "ARGS" more fMRIPrep options (default: "--output-spaces MNI152NLin2009cAsym")
#   --bidsfm-args "ARGS"   more bidsfm options
#   --fs-license FILE      FreeSurfer licence passed to fMRIPrep (--fs-license-file)
#   -w, --work-dir DIR     work folder (default: OUT_DIR/work)
#   --skip-fmriprep        only run bidsfm (fMRIPrep outputs already in OUT_DIR/fmriprep)
#   -n, --dry-run          print the commands, run nothing
#   -h, --help
#
# Words in CMD and ARGS are split on whitespace (no quoting). Exit status: 0 when every
# participant went through both steps, 1 when any step failed (the others still ran), 2 for
# bad arguments.
set -euo pipefail

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "fmriprep_then_bidsfm: $*" >&2; exit 2; }

fcmd=${FMRIPREP_CMD:-fmriprep} bcmd=${BIDSFM_CMD:-bidsfm}
fargs="--output-spaces MNI152NLin2009cAsym" bargs="" license="" work="" skip=0 dry=0
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --fmriprep-cmd) fcmd=${2?}; shift 2 ;;
    --bidsfm-cmd) bcmd=${2?}; shift 2 ;;
    --fmriprep-args) fargs=${2?}; shift 2 ;;
    --bidsfm-args) bargs=${2?}; shift 2 ;;
    --fs-license) license=${2?}; shift 2 ;;
    -w|--work-dir) work=${2?}; shift 2 ;;
    --skip-fmriprep) skip=1; shift ;;
    -n|--dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; positional+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -ge 2 ] || die "expected BIDS_DIR OUT_DIR [LABEL ...] (see --help)"
bids=$(realpath -m "${positional[0]}")
out=$(realpath -m "${positional[1]}")
work=$(realpath -m "${work:-$out/work}")
[ -d "$bids" ] || die "$bids: BIDS folder not found"
if [ -n "$license" ]; then
  [ -f "$license" ] || die "$license: FreeSurfer licence file not found"
  license=$(realpath "$license")
fi

labels=("${positional[@]:2}")
if [ ${#labels[@]} -eq 0 ]; then
  if [ -f "$bids/participants.tsv" ]; then
    mapfile -t labels < <(awk -F'\t' 'NR==1 {for (i=1; i<=NF; i++) if ($i=="participant_id") c=i; next}
                                      c && $c != "" {print $c}' "$bids/participants.tsv")
  else
    for d in "$bids"/sub-*/; do [ -d "$d" ] && labels+=("$(basename "$d")"); done
  fi
fi
[ ${#labels[@]} -gt 0 ] || die "no participant given and none found in $bids"
for i in "${!labels[@]}"; do
  lab=${labels[$i]#sub-}
  [[ "$lab" =~ ^[A-Za-z0-9]+$ ]] || die "participant label '${labels[$i]}' is not a BIDS label"
  labels[i]=$lab
done

read -r -a fcmd_a <<< "$fcmd"
read -r -a bcmd_a <<< "$bcmd"
read -r -a fargs_a <<< "$fargs"
read -r -a bargs_a <<< "$bargs"
lic=()
[ -n "$license" ] && lic=(--fs-license-file "$license")

step() {  # print the command; run it unless --dry-run; return its status
  printf '%q ' "$@" | sed 's/ $//'
  echo
  [ "$dry" = 1 ] && return 0
  "$@"
}

status=0
for lab in "${labels[@]}"; do
  echo "# sub-$lab"
  if [ "$skip" = 0 ]; then
    if ! step "${fcmd_a[@]}" "$bids" "$out/fmriprep" participant --participant-label "$lab" \
        -w "$work/fmriprep" "${lic[@]}" "${fargs_a[@]}"; then
      echo "fmriprep_then_bidsfm: fMRIPrep failed for sub-$lab; bidsfm not run for it" >&2
      status=1
      continue
    fi
  fi
  if ! step "${bcmd_a[@]}" "$out/fmriprep" "$out/bidsfm" participant --participant-label "$lab" \
      -w "$work/bidsfm" "${bargs_a[@]}"; then
    echo "fmriprep_then_bidsfm: bidsfm failed for sub-$lab" >&2
    status=1
  fi
done
exit "$status"
