#!/usr/bin/env bash
# Install edgecompress with everything the demo and the tests need, on a fresh machine.
# torch goes first, pinned to the CPU build: any looser torch requirement pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -c tools/constraints.txt -e ".[dev]"

# --- report.html browser test (issue 13) -------------------------------------------------------------------
# tests/test_report_html.py opens report.html in Debian's headless chromium (images load, no console errors).
# Installed only where apt-get exists and chromium is missing; elsewhere that test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    as_root=""
    [ "$(id -u)" -eq 0 ] || as_root="sudo -n"
    { $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        || echo "install.sh: could not install chromium; the report.html browser test will skip" >&2
fi
# --- end report.html browser test ---------------------------------------------------------------------------
