#!/usr/bin/env bash
# Install bidsfm into .venv, generate the demo fMRIPrep dataset and run bidsfm on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export NIPYPE_NO_ET=1
SHARED=${BIDSFM_SHARED_DATA:-$(cd .. && pwd)/shared/data}
DEMO=${BIDSFM_DEMO_DIR:-$PWD/demo}
export BIDSFM_HOME=${BIDSFM_HOME:-$DEMO/bidsfm_home}
mkdir -p "$DEMO"
if [ -f "$SHARED/atlases/CC200.nii.gz" ]; then
  # seed the atlas cache from the local copy (verified against the registry's sha256)
  .venv/bin/bidsfm-atlas seed CC200 "$SHARED/atlases/CC200.nii.gz"
fi
echo "== Generating the demo fMRIPrep dataset in $DEMO/fmriprep"
.venv/bin/bidsfm-demo "$DEMO/fmriprep" --size small --shared-data "$SHARED"
echo "== Running bidsfm (participant level)"
set +e
.venv/bin/bidsfm "$DEMO/fmriprep" "$DEMO/bidsfm" participant -w "$DEMO/work" --nprocs 2
code=$?
set -e
echo
echo "== bidsfm exited with code $code"
echo "Outputs (BIDS derivatives): $DEMO/bidsfm"
find "$DEMO/bidsfm" -name '*_timeseries.tsv' | sort | sed 's/^/  /' | head -20
echo "Each run has: *_stat-mean_timeseries.tsv(.json), *_stat-coverage_bold.tsv,"
echo "  *_meas-PearsonCorrelation_relmat.tsv (+ desc-fisherz), *_qc.tsv(.json),"
echo "  and from the bundled model: *_desc-bidsfmfc_{embedding,predictions,attention}.tsv,"
echo "  *_desc-bidsfmfc_stat-attention_statmap.nii.gz. See docs/outputs.md and docs/models.md."
pred=$(find "$DEMO/bidsfm" -name '*_predictions.tsv' | sort | head -1)
if [ -n "$pred" ]; then echo "Example predictions ($(basename "$pred")):"; sed 's/^/  /' "$pred"; fi
exit $code
