#!/usr/bin/env bash
# Install everything (runtime + test dependencies) into .venv, then run the test suite.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k filter -x
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh --test
export NO_ALBUMENTATIONS_UPDATE=1 GLOG_v="${GLOG_v:-3}"
exec .venv/bin/python -m pytest "$@"
