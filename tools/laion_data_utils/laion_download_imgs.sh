#!/usr/bin/env bash
# Download LAION images for metadata parts with img2dataset.
#   bash laion_download_imgs.sh 1 --metadata_dir META --output_dir DATA
#   LAION_METADATA_DIR=META LAION_OUTPUT_DIR=DATA bash laion_download_imgs.sh 1-3
# All settings are flags, keys of a --config yaml or LAION_* environment variables (a flag beats the yaml,
# the yaml beats the variable): see `bash laion_download_imgs.sh --help`.
# PYTHON selects the interpreter (default: the active venv, else the checkout's .venv, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/find_python.sh"
export NO_ALBUMENTATIONS_UPDATE="${NO_ALBUMENTATIONS_UPDATE:-1}"
exec "$python_bin" "$here/laion_download_imgs.py" "$@"
