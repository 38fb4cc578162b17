# Sourced by the .sh wrappers: picks the Python that runs the tools.
# Order: $PYTHON if set; the active virtual environment; the checkout's .venv (made by scripts/setup_env.sh);
# else python3 from PATH.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  python_bin="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
  python_bin="$VIRTUAL_ENV/bin/python"
elif [[ -x "$_here/../../.venv/bin/python" ]]; then
  python_bin="$_here/../../.venv/bin/python"
else
  python_bin=python3
fi
