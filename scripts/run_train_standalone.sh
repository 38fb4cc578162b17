#!/usr/bin/env bash
# SD 2.x training on one device (NPU, GPU or CPU). All arguments go to train_text_to_image.py:
#   scripts/run_train_standalone.sh --config configs/train/sd2_base_finetune.yaml --data_path /data/my_images
# DEVICE_ID picks the NPU (default 0).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DEVICE_ID="${DEVICE_ID:-0}"
exec python "$(dirname "$here")/examples/stable_diffusion_v2/train_text_to_image.py" "$@"
