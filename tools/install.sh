#!/usr/bin/env bash
# Install edgecompress with everything the demo and the tests need, on a fresh machine.
# torch goes first, pinned to the CPU build: any looser torch requirement pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -c tools/constraints.txt -e ".[dev]"
