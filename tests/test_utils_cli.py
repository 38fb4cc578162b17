"""The CLI convention: a user error is one line on stderr and exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


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


@pytest.mark.parametrize("argv, env, message", [
    (["--config", "{bad}"], {}, "--config {bad}: unknown key 'stepz' (see --help for the options)"),
    ([], {"T_STEPS": "many"}, "environment variable T_STEPS='many' is not a valid int"),
])
def test_an_options_error_is_one_line_and_exit_2(tmp_path, argv, env, message):
    """The option registry's ConfigError (a bad yaml key, a bad variable) under run_main, as a user sees it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    argv = [a.format(bad=bad) for a in argv]
    proc = _run(
        "import sys\n"
        "from mindone.utils.cli import run_main\n"
        "from mindone.utils.config import Option, resolve_config\n"
        "options = [Option('steps', int, 1, 'steps', env='T_STEPS')]\n"
        "run_main(lambda argv: resolve_config(options, argv, 'test', environ=%r) and 0, %r)\n" % (env, argv)
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"-c: error: {message.format(bad=bad)}"]


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
