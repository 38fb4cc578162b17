#!/usr/bin/env bash
# Install everything into .venv, then run the whole pipeline on embedded sample data.
# Outputs go to ./demo_output (reused by a second run). Extra arguments go to the demo driver.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
export NO_ALBUMENTATIONS_UPDATE=1 GLOG_v="${GLOG_v:-3}"
exec .venv/bin/python examples/demo/run_demo.py "$@"
