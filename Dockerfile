# bidsfm BIDS App image.
#
#   docker build -t bidsfm .                                  # CUDA build of PyTorch (GPU hosts)
#   docker build --build-arg TORCH_VARIANT=cpu -t bidsfm:cpu . # CPU-only PyTorch (small)
#   docker run --rm --read-only --tmpfs /tmp --network none \
#       -v /data/fmriprep:/bids:ro -v /data/out:/out -v /scratch/work:/work \
#       bidsfm /bids /out participant --participant-label 01
#
# Build arguments (see docs/containers.md):
#   BASE_IMAGE           an image with python3 (3.11+) and its venv module; base of every stage
#   TORCH_VARIANT        cuda (default: PyPI's torch wheel, CUDA libraries included) or cpu
#   TORCH_VERSION        the torch release pinned in pyproject.toml
#   TORCH_CPU_INDEX_URL  where the +cpu wheel lives; empty = only pip's configured sources
#   CC200_FILE           path (inside the build, e.g. from `podman build -v`) of a local CC200
#                        copy; empty or missing = the copy that ships with bidsfm (sha256-checked)
#   ATLAS_FETCH          space-separated atlas names baked into the image's atlas cache with
#                        `bidsfm-atlas fetch` (e.g. "Gordon333 Glasser360 TianS3"); needs network
#                        at build time. CC200, Schaefer400x17 and Tian S1-S4 (MNI152NLin2009cAsym)
#                        ship inside the package and need nothing (docs/atlases.md)
#   TEMPLATEFLOW_FETCH   space-separated TemplateFlow sets baked into TEMPLATEFLOW_HOME: xfm
#                        (MNI152NLin6Asym -> MNI152NLin2009cAsym transform used for CC200 on
#                        fMRIPrep's default space) and/or SchaeferNxK; needs network at build time
#   PIP_EXTRA_ARGS       extra `pip install` arguments (mirrors, --find-links, --cert)
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------------------------
# Stage 1: a virtual environment with PyTorch and bidsfm's dependencies (rebuilt only when
# pyproject.toml or the torch arguments change). The final image starts from it.
FROM ${BASE_IMAGE} AS deps
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_EXTRA_ARGS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NIPYPE_NO_ET=1

# PyTorch first: the largest layer
# hadolint ignore=SC2086
RUN python3 -m venv /opt/venv \
    && case "${TORCH_VARIANT}" in \
         cuda) /opt/venv/bin/pip install ${PIP_EXTRA_ARGS} "torch==${TORCH_VERSION}" ;; \
         cpu) /opt/venv/bin/pip install ${PIP_EXTRA_ARGS} \
                ${TORCH_CPU_INDEX_URL:+--extra-index-url "${TORCH_CPU_INDEX_URL}"} \
                "torch==${TORCH_VERSION}+cpu" ;; \
         *) echo "TORCH_VARIANT must be cuda or cpu, not '${TORCH_VARIANT}'" >&2; exit 2 ;; \
       esac

COPY pyproject.toml /src/
# hadolint ignore=SC2086
RUN /opt/venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /src/requirements.txt \
    && /opt/venv/bin/pip install ${PIP_EXTRA_ARGS} -r /src/requirements.txt \
    && rm -rf /src

# --------------------------------------------------------------------------------------------
# Stage 2: install bidsfm, fetch the data the default run needs; only the results are kept.
FROM deps AS build
ARG PIP_EXTRA_ARGS=""
ARG CC200_FILE=""
ARG ATLAS_FETCH=""
ARG TEMPLATEFLOW_FETCH=""
COPY pyproject.toml README.md /src/
COPY bidsfm /src/bidsfm
COPY containers/export_dist.py containers/fetch_templateflow.py /src/containers/
# bidsfm itself (the bundled models are its package data), exported as an overlay tree
# hadolint ignore=SC2086
RUN /opt/venv/bin/pip install ${PIP_EXTRA_ARGS} --no-deps /src \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python /src/containers/export_dist.py /opt/overlay bidsfm
# The atlas cache: CC200 checked (or seeded), the demo's Schaefer + Tian joined once, and on
# request more atlases (ATLAS_FETCH) and TemplateFlow files
# hadolint ignore=SC2086
RUN mkdir -p /opt/bidsfm/home /opt/templateflow \
    && export BIDSFM_HOME=/opt/bidsfm/home TEMPLATEFLOW_HOME=/opt/templateflow \
    && if [ -n "${CC200_FILE}" ] && [ -f "${CC200_FILE}" ]; then \
         /opt/venv/bin/bidsfm-atlas seed CC200 "${CC200_FILE}"; \
       else \
         /opt/venv/bin/bidsfm-atlas where CC200; \
       fi \
    && /opt/venv/bin/bidsfm-atlas where TianS3+Schaefer400x17 --space MNI152NLin2009cAsym \
    && if [ -n "${ATLAS_FETCH}" ]; then /opt/venv/bin/bidsfm-atlas fetch ${ATLAS_FETCH}; fi \
    && if [ -n "${TEMPLATEFLOW_FETCH}" ]; then \
         python3 -m venv /tmp/tfvenv \
         && /tmp/tfvenv/bin/pip install ${PIP_EXTRA_ARGS} "templateflow>=24.2" \
         && /tmp/tfvenv/bin/python /src/containers/fetch_templateflow.py ${TEMPLATEFLOW_FETCH} \
         && rm -rf /tmp/tfvenv; \
       fi

# --------------------------------------------------------------------------------------------
# Final image: the dependency environment + bidsfm + data, a non-root user.
FROM deps
ARG TORCH_VARIANT=cuda
LABEL org.opencontainers.image.title="bidsfm" \
      org.opencontainers.image.description="BIDS App: brain-network foundation models on fMRIPrep derivatives" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.bidsfm.torch-variant="${TORCH_VARIANT}"

# A fixed non-root user (uid/gid 10001); any other uid works too (docker run -u "$(id -u)").
# Minimal bases may lack useradd: then the account is written to passwd/group directly.
RUN if command -v useradd > /dev/null; then \
         groupadd --system --gid 10001 bidsfm \
         && useradd --system -l --uid 10001 --gid 10001 --home-dir /home/bidsfm \
              --shell /usr/sbin/nologin bidsfm; \
       else \
         echo "bidsfm:x:10001:10001:bidsfm:/home/bidsfm:/usr/sbin/nologin" >> /etc/passwd \
         && echo "bidsfm:x:10001:" >> /etc/group; \
       fi \
    && mkdir -p /home/bidsfm /bids /out /work \
    && chown 10001:10001 /home/bidsfm /out /work \
    && chmod 1777 /home/bidsfm /work

COPY --from=build /opt/overlay/ /
COPY --from=build /opt/bidsfm /opt/bidsfm
COPY --from=build /opt/templateflow /opt/templateflow

# NIPYPE_NO_ET: no telemetry call. BIDSFM_OFFLINE: the image holds every file the default run
# needs, so never wait on a network (override with -e BIDSFM_OFFLINE=0).
# Writable places for a read-only root filesystem: /tmp (tmpfs) for matplotlib and Nipype's
# config, /work and /out as mounts.
ENV PATH=/opt/venv/bin:${PATH} \
    NIPYPE_NO_ET=1 \
    BIDSFM_OFFLINE=1 \
    BIDSFM_HOME=/opt/bidsfm/home \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    HOME=/home/bidsfm \
    MPLCONFIGDIR=/tmp/matplotlib \
    NIPYPE_CONFIG_DIR=/tmp/nipype \
    XDG_CACHE_HOME=/tmp/cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# smoke test (as root, so the atlas verification stamp matches the copied file)
RUN bidsfm --version && bidsfm-atlas where CC200 > /dev/null

USER 10001:10001
WORKDIR /work
ENTRYPOINT ["bidsfm"]
CMD ["--help"]
