#!/usr/bin/env bash
# Install everything into .venv and run the test suite (and the linter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_system.sh
bash scripts/setup_env.sh
export NIPYPE_NO_ET=1
# tests never touch the network or the user's caches
export BIDSFM_OFFLINE=1
.venv/bin/ruff check bidsfm tests
.venv/bin/python -m pytest -n 2 -q tests "$@"
