#!/usr/bin/env bash
# Install bidsfm into .venv, generate the demo fMRIPrep dataset (6 participants, 3 sites) and run
# bidsfm on it: the participant level, then the group level (heads on participants.tsv).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Everything the demo needs ships with bidsfm (the CC200 atlas, Schaefer400x17 and Tian S3 in
# MNI152NLin2009cAsym, and the ABIDE mean FC used to synthesise realistic signals, under
# bidsfm/data/): no ../shared/data and no network needed.
export NIPYPE_NO_ET=1
export BIDSFM_OFFLINE=${BIDSFM_OFFLINE:-1}  # nothing the demo uses is downloaded
DEMO=${BIDSFM_DEMO_DIR:-$PWD/demo}
export BIDSFM_HOME=${BIDSFM_HOME:-$DEMO/bidsfm_home}
mkdir -p "$DEMO"
echo "== Generating the demo fMRIPrep dataset in $DEMO/fmriprep"
.venv/bin/bidsfm-demo "$DEMO/fmriprep" --size small --n-subjects 6
echo "== Running bidsfm (participant level): CC200 and Schaefer400x17 + Tian S3 (450 ROIs)"
set +e
.venv/bin/bidsfm "$DEMO/fmriprep" "$DEMO/bidsfm" participant -w "$DEMO/work" --nprocs 2 \
    --atlas CC200 --atlas TianS3+Schaefer400x17
code=$?
echo "== Running bidsfm (group level)"
.venv/bin/bidsfm "$DEMO/fmriprep" "$DEMO/bidsfm" group -w "$DEMO/work" \
    --target diagnosis --target age --group-column site --reference diagnosis=TC
gcode=$?
set -e
echo
echo "== bidsfm exited with code $code (participant level) and $gcode (group level)"
echo "Outputs (BIDS derivatives): $DEMO/bidsfm"
find "$DEMO/bidsfm" -name '*_timeseries.tsv' | sort | sed 's/^/  /' | head -20
echo "Each run has: *_stat-mean_timeseries.tsv(.json), *_stat-coverage_bold.tsv,"
echo "  *_stat-pearsoncorrelation_relmat.tsv (+ desc-fisherz), *_qc.tsv(.json),"
echo "  and from the bundled model: *_desc-bidsfmfc_{embedding,predictions,attention}.tsv,"
echo "  *_stat-attention_desc-bidsfmfc_statmap.nii.gz. See docs/outputs.md and docs/models.md."
echo "How each atlas was placed on the runs (QC column atlas_transform; also Atlas.Transform in"
echo "  the sidecars; the atlas files are in $DEMO/bidsfm/sourcedata/atlases):"
find "$DEMO/bidsfm" -path '*/func/*' -name '*_qc.tsv' | sort | while read -r qc; do
  awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i }
               NR == 2 { print "  " $col["atlas"] ": " $col["atlas_transform"] }' "$qc"
done | sort -u
pred=$(find "$DEMO/bidsfm" -path '*/func/*' -name '*_predictions.tsv' | sort | head -1)
if [ -n "$pred" ]; then echo "Example predictions ($(basename "$pred")):"; sed 's/^/  /' "$pred"; fi
echo "Reports (open in a browser, work offline):"
find "$DEMO/bidsfm" -maxdepth 1 -name '*.html' | sort | sed 's/^/  /'
echo "Group tables, heads and metrics: $DEMO/bidsfm/group (see docs/group.md)"
for m in "$DEMO"/bidsfm/group/target-*/metrics.tsv; do
  [ -f "$m" ] && { echo "  $(basename "$(dirname "$m")") (6 participants: a smoke test, not a result):"; sed 's/^/    /' "$m"; }
done
echo "Methods text with citations: $DEMO/bidsfm/logs/CITATION.md"
if [ "$code" -ne 0 ]; then exit "$code"; fi
exit "$gcode"
