#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install what it needs.
#   bash scripts/setup_env.sh          runtime dependencies
#   bash scripts/setup_env.sh --test   runtime + test-only dependencies (torch CPU, diffusers, ...)
# Idempotent: a stamp file records the hash of the requirement files last installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating virtual environment in $root/.venv"
  "$python_bin" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)

files=(requirements.txt)
((want_test)) && files+=(requirements-test.txt)
stamp=".venv/.installed-$( ((want_test)) && echo test || echo runtime)"
digest="$(cat "${files[@]}" pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
  echo "[setup] environment up to date (.venv)"
  exit 0
fi

echo "[setup] installing ${files[*]} into .venv (first run takes a few minutes)"
req_args=()
for f in "${files[@]}"; do req_args+=(-r "$f"); done
"${pip[@]}" install -q "${req_args[@]}"
# The OpenCLIP BPE vocabulary ships inside the open_clip_torch wheel; --no-deps brings the file
# without pulling torch into the runtime environment.
"${pip[@]}" install -q --no-deps "open_clip_torch==3.3.0"
"${pip[@]}" install -q --no-deps -e .
echo "$digest" > "$stamp"
echo "[setup] done"
