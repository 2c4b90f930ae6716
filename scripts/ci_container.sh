#!/usr/bin/env bash
# CI: build the bidsfm image (CPU variant) with podman from a locally made Debian base, then run
# the demo participant level inside it with no network, a read-only root filesystem, a read-only
# /bids mount and a non-root user, and check its outputs.
#
#   bash scripts/ci_container.sh            # reuses the cached base image and build layers
#   bash scripts/ci_container.sh --fresh    # removes the images first (a from-scratch timing)
#
# Runs as root (podman/buildah/debootstrap). Environment overrides:
#   BIDSFM_IMAGE (localhost/bidsfm:ci-cpu), BIDSFM_BASE_IMAGE (localhost/debian-py:bookworm),
#   BIDSFM_SHARED_DATA (../shared/data), BIDSFM_CI_DIR (/tmp/bidsfm-ci), DEBIAN_MIRROR.
# Exit status: 0 on success, 1 with a one-line "ci_container: FAIL: ..." message otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
IMAGE=${BIDSFM_IMAGE:-localhost/bidsfm:ci-cpu}
BASE=${BIDSFM_BASE_IMAGE:-localhost/debian-py:bookworm}
SHARED=${BIDSFM_SHARED_DATA:-$(cd .. && pwd)/shared/data}
CI_DIR=${BIDSFM_CI_DIR:-/tmp/bidsfm-ci}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CONTAINER_UID=10001
FRESH=0
for arg in "$@"; do
  case "$arg" in
    --fresh) FRESH=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "ci_container: unknown argument '$arg' (--fresh or --help)" >&2; exit 2 ;;
  esac
done

fail() { echo "ci_container: FAIL: $*" >&2; exit 1; }
step() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }

[ "$(id -u)" = 0 ] || fail "must run as root (podman, buildah and debootstrap need it here)"

# -- system packages --------------------------------------------------------------------------
missing=()
for pair in podman:podman buildah:buildah debootstrap:debootstrap runc:runc \
            fuse-overlayfs:fuse-overlayfs newuidmap:uidmap; do
  command -v "${pair%%:*}" > /dev/null || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null \
    || fail "apt-get install ${missing[*]} failed"
fi

# -- podman configuration (no systemd, no cgroup delegation here) -----------------------------
mkdir -p "$CI_DIR"
cat > "$CI_DIR/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$CI_DIR/containers.conf
podman info > "$CI_DIR/podman-info.txt" 2>&1 || fail "podman info failed: $(tail -1 "$CI_DIR/podman-info.txt")"
grep -q 'graphDriverName: overlay' "$CI_DIR/podman-info.txt" \
  || echo "ci_container: note: podman storage driver is not overlay ($(grep graphDriverName "$CI_DIR/podman-info.txt"))"

if [ "$FRESH" = 1 ]; then
  step "removing $IMAGE and $BASE (--fresh)"
  podman rmi -f "$IMAGE" "$BASE" > /dev/null 2>&1 || true
  podman image prune -f > /dev/null 2>&1 || true
  podman builder prune -f > /dev/null 2>&1 || true
fi

# -- base image: Debian bookworm + python3 (3.11) made with debootstrap, cached ---------------
if podman image exists "$BASE"; then
  step "base image $BASE: cached"
else
  step "building base image $BASE with debootstrap ($MIRROR)"
  rootfs=$CI_DIR/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" > "$CI_DIR/debootstrap.log" 2>&1 \
    || fail "debootstrap failed, see $CI_DIR/debootstrap.log: $(tail -1 "$CI_DIR/debootstrap.log")"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import - "$BASE" > /dev/null || fail "podman import failed"
  rm -rf "$rootfs"
fi

# -- the demo dataset, made on the host while the image builds --------------------------------
[ -x .venv/bin/bidsfm-demo ] || bash scripts/setup_env.sh  # CI: scripts/test.sh made it
demo=$CI_DIR/demo
rm -rf "$demo"
mkdir -p "$demo/out" "$demo/work"
NIPYPE_NO_ET=1 nice -n 5 .venv/bin/bidsfm-demo "$demo/bids" --size tiny --n-subjects 1 \
  --shared-data "$SHARED" > "$CI_DIR/demo.log" 2>&1 &
demo_pid=$!
trap '[ -n "$demo_pid" ] && kill "$demo_pid" 2> /dev/null; true' EXIT

# -- the bidsfm image (CPU variant) -----------------------------------------------------------
# pip inside the build uses the host's sources: the CA bundle (for a TLS-intercepting proxy),
# local wheel folders / file:// indexes (the CPU torch wheel), then PyPI.
build_args=(--build-arg "BASE_IMAGE=$BASE" --build-arg TORCH_VARIANT=cpu)
mounts=()
pip_conf=$CI_DIR/pip.conf
{
  echo "[global]"
  echo "disable-pip-version-check = true"
  echo "timeout = 180"
} > "$pip_conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  echo "cert = /etc/ssl/certs/ca-certificates.crt" >> "$pip_conf"
fi
find_links=()
extra_index=()
if [ -d /opt/wheels ]; then
  find_links+=(/opt/wheels)
  mounts+=(-v /opt/wheels:/opt/wheels:ro)
fi
for d in /opt/pypi /opt/pypi-more; do
  [ -d "$d/simple" ] && { extra_index+=("file://$d/simple"); mounts+=(-v "$d:$d:ro"); }
done
[ ${#find_links[@]} -gt 0 ] && echo "find-links = ${find_links[*]}" >> "$pip_conf"
[ ${#extra_index[@]} -gt 0 ] && echo "extra-index-url = ${extra_index[*]}" >> "$pip_conf"
mounts+=(-v "$pip_conf:/etc/pip.conf:ro")
if ls /opt/wheels/torch-*+cpu-*.whl > /dev/null 2>&1; then
  build_args+=(--build-arg TORCH_CPU_INDEX_URL=)  # the local +cpu wheel; no pytorch.org index
fi
cc200=$SHARED/atlases/CC200.nii.gz
if [ -f "$cc200" ]; then
  want=$(sed -n 's/^CC200_SHA256 = "\([0-9a-f]*\)"/\1/p' bidsfm/atlases/registry.py)
  got=$(sha256sum "$cc200" | cut -d' ' -f1)
  [ "$got" = "$want" ] || fail "$cc200: sha256 $got differs from bidsfm/atlases/registry.py's $want"
  mounts+=(-v "$(dirname "$cc200"):/ci-atlases:ro")
  build_args+=(--build-arg CC200_FILE=/ci-atlases/CC200.nii.gz)
else
  echo "ci_container: note: $cc200 not found; the build downloads CC200 (URL + sha256)"
fi
step "building $IMAGE (podman build --isolation chroot, TORCH_VARIANT=cpu)"
podman build --isolation chroot --layers "${build_args[@]}" "${mounts[@]}" \
  -t "$IMAGE" -f Dockerfile . > "$CI_DIR/build.log" 2>&1 \
  || fail "podman build failed, see $CI_DIR/build.log: $(tail -3 "$CI_DIR/build.log" | tr '\n' ' ')"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
step "built $IMAGE ($(( size / 1000000 )) MB)"
wait "$demo_pid" || { demo_pid=""; fail "bidsfm-demo failed, see $CI_DIR/demo.log: $(tail -1 "$CI_DIR/demo.log")"; }
demo_pid=""
chmod -R a+rX "$demo/bids"
chown "$CONTAINER_UID:$CONTAINER_UID" "$demo/out" "$demo/work"


# -- the image's user -------------------------------------------------------------------------
uid=$(podman run --rm --network none --entrypoint id "$IMAGE" -u) \
  || fail "cannot run 'id -u' in $IMAGE"
[ "$uid" != 0 ] || fail "the container runs as root (id -u = 0); the image must set a non-root USER"
[ "$uid" = "$CONTAINER_UID" ] || fail "the container user is uid $uid, expected $CONTAINER_UID"

# -- participant level inside the container ---------------------------------------------------
step "bidsfm participant level in the container (--network none, --read-only, /bids:ro, uid $uid)"
set +e
podman run --rm --network none --read-only --tmpfs /tmp \
  -v "$demo/bids:/bids:ro" -v "$demo/out:/out" -v "$demo/work:/work" \
  "$IMAGE" /bids /out participant --participant-label 01 -w /work --nprocs 2 \
  > "$CI_DIR/run.log" 2>&1
code=$?
set -e
[ "$code" = 0 ] || fail "bidsfm in the container exited with $code, see $CI_DIR/run.log: $(tail -2 "$CI_DIR/run.log" | tr '\n' ' ')"

n_runs=$(find "$demo/bids/sub-01" -name '*_desc-preproc_bold.nii.gz' | wc -l)
[ "$n_runs" -gt 0 ] || fail "the demo dataset has no BOLD run for sub-01"
for pattern in '_atlas-CC200_stat-mean_timeseries.tsv' '_atlas-CC200_stat-pearsoncorrelation_relmat.tsv' \
               '_desc-bidsfmfc_embedding.tsv' '_desc-bidsfmfc_predictions.tsv'; do
  n=$(find "$demo/out/sub-01" -name "*$pattern" -size +0 | wc -l)
  [ "$n" = "$n_runs" ] || fail "expected $n_runs non-empty *$pattern file(s) in $demo/out/sub-01, found $n"
done
[ -f "$demo/out/dataset_description.json" ] || fail "no dataset_description.json in $demo/out"
owners=$(find "$demo/out/sub-01" -type f -printf '%u\n' | sort -u | tr '\n' ' ')
[ "$owners" = "$CONTAINER_UID " ] \
  || fail "outputs should all be owned by uid $CONTAINER_UID (the container user), found: $owners"
if find "$demo/bids" -newer "$CI_DIR/demo.log" -print -quit | grep -q .; then
  fail "something in the read-only input $demo/bids changed during the run"
fi
step "OK: $n_runs run(s) of sub-01 processed in the container as uid $uid; total $(( $(date +%s) - T0 )) s"
