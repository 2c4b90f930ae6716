#!/usr/bin/env bash
# Install the Debian packages the test suite and the container check need, when missing:
#   chromium            - the HTML reports are rendered in headless Chromium (tests/test_reports.py)
#   slurm-wlm munge     - a real single-node SLURM cluster for the workflow recipes (tests/test_slurm.py)
#   podman buildah ...  - building and running the container (scripts/ci_container.sh)
# Needs root (CI and the development machines run as root). Without root, missing packages are
# reported and the tests that need them skip with that reason.
set -euo pipefail

want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
command -v slurmctld >/dev/null 2>&1 || want+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || want+=(munge)
if [[ "${BIDSFM_SKIP_CONTAINER:-0}" != 1 ]]; then
  command -v podman >/dev/null 2>&1 || want+=(podman)
  command -v buildah >/dev/null 2>&1 || want+=(buildah)
  command -v debootstrap >/dev/null 2>&1 || want+=(debootstrap)
  command -v newuidmap >/dev/null 2>&1 || want+=(uidmap)
  command -v fuse-overlayfs >/dev/null 2>&1 || want+=(fuse-overlayfs)
  command -v runc >/dev/null 2>&1 || want+=(runc)
fi

if ((${#want[@]} == 0)); then
  exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_system: missing ${want[*]} (install them with apt-get as root);" \
       "the tests that need them will skip" >&2
  exit 0
fi
echo "setup_system: installing ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${want[@]}" >/dev/null
