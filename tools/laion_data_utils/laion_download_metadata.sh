#!/usr/bin/env bash
# Download LAION metadata; all flags go to laion_download_metadata.py (see --help).
# Example: bash tools/laion_data_utils/laion_download_metadata.sh --parts 1-8 --output_dir laion_2b_en_ae4.5
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/find_python.sh"
exec "$python_bin" "$here/laion_download_metadata.py" "$@"
