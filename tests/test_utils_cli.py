"""The CLI convention: a user error is one line on stderr and exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_user_error_is_one_line_and_exit_2():
    proc = _run(
        "from mindone.utils.cli import UserError, run_main\n"
        "def main(argv):\n"
        "    raise UserError('data/x.parquet: column WIDTH is missing')\n"
        "run_main(main)\n"
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("error: data/x.parquet: column WIDTH is missing")


def test_bug_keeps_its_traceback():
    proc = _run("from mindone.utils.cli import run_main\nrun_main(lambda argv: 1/0)\n")
    assert proc.returncode == 1
    assert "ZeroDivisionError" in proc.stderr and "Traceback" in proc.stderr


def test_exit_code_from_main_is_returned():
    proc = _run("from mindone.utils.cli import run_main\nrun_main(lambda argv: 3)\n")
    assert proc.returncode == 3


def test_importing_mindone_does_not_load_mindspore():
    proc = _run("import sys, mindone, mindone.utils.atomic, mindone.utils.cli\nprint('mindspore' in sys.modules)")
    assert proc.stdout.strip() == "False"
