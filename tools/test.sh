#!/usr/bin/env bash
# The test suite, as CI runs it: install, lint and type-check, then pytest (slow real-model tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
export HF_HUB_OFFLINE=1
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy edgecompress
python3 -m pytest -q "$@"
