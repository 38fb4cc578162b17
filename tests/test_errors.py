"""The error contract: the library raises :mod:`mindone.errors` (ValueError subclasses); only the CLI layer
(``run_main``) turns them into one line on stderr and exit status 2."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mindone import errors
from mindone.utils.cli import ONE_LINE_ERRORS, UserError

PACKAGE = Path(__file__).resolve().parents[1] / "mindone"
# The CLI layer under mindone/: run_main's module, and the flag / yaml option loader the CLIs parse with.
CLI_LAYER = {"utils/cli.py", "utils/config.py"}


def _user_error_uses(path: Path) -> list[int]:
    """Lines of ``path`` that import, raise or catch ``UserError`` (by name or as ``cli.UserError``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "UserError" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id == "UserError":
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "UserError":
            lines.append(node.lineno)
    return sorted(set(lines))


def test_library_modules_do_not_use_the_cli_error():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 50
    hits = [f"mindone/{p.relative_to(PACKAGE).as_posix()}:{n}" for p in sources
            if p.relative_to(PACKAGE).as_posix() not in CLI_LAYER for n in _user_error_uses(p)]
    assert hits == [], "library code raises mindone.errors, not the CLI's UserError"


def test_library_errors_are_value_errors():
    from mindone.data.locations import UnsafeLocation
    from mindone.laion.http_download import DownloadError
    from mindone.laion.shard_filter import ShardFilterError
    from mindone.laion.url_guard import UrlGuardError

    for cls in (errors.ConfigError, errors.DataError, errors.CheckpointError, errors.DownloadError,
                UnsafeLocation, UrlGuardError, ShardFilterError):
        assert issubclass(cls, errors.MindoneError) and issubclass(cls, ValueError), cls
    assert issubclass(errors.CheckpointError, errors.DataError)
    assert issubclass(UnsafeLocation, errors.DataError)
    assert DownloadError is errors.DownloadError  # one class, importable where it is raised
    assert set(ONE_LINE_ERRORS) == {UserError, errors.MindoneError}
    assert not issubclass(UserError, ValueError)  # the CLI's own class stays out of library except-clauses


def test_a_ValueError_around_a_library_check_does_not_swallow_it():
    # parse_part_ids reads numbers inside `try/except ValueError`; its own error must not be re-worded by it
    from mindone.laion.img2dataset_launch import parse_part_ids

    with pytest.raises(errors.ConfigError, match=r"part range '3-1' is empty"):
        parse_part_ids(["3-1"])
    with pytest.raises(errors.ConfigError, match=r"part id 'x' is not a number"):
        parse_part_ids(["x"])


def _run_main(body: str) -> subprocess.CompletedProcess:
    code = f"from mindone.utils.cli import run_main\ndef main(argv):\n{body}\nrun_main(main)\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("body, message", [
    ("    from mindone.laion.subsets import parse_parts\n    parse_parts('x', 3)",
     "error: --parts: cannot parse 'x' in 'x' (expected e.g. 1-8,12)"),
    ("    from mindone.data.annotations import resolve_annotation_files\n"
     "    resolve_annotation_files('/nonexistent/data', 'files')",
     "error: data_path /nonexistent/data: no such file or folder"),
    ("    from mindone.errors import DownloadError\n    raise DownloadError('http://h/x: HTTP 404 Not Found')",
     "error: http://h/x: HTTP 404 Not Found"),
])
def test_run_main_turns_a_library_error_into_one_line(body, message):
    proc = _run_main(body)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].endswith(message) and "Traceback" not in proc.stderr


def test_a_programming_error_keeps_its_traceback():
    # an impossible argument (no flag can produce it) is a plain ValueError: a bug, shown as one
    proc = _run_main("    from mindone.data.annotations import resolve_annotation_files\n"
                     "    resolve_annotation_files('.', 'bogus')")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: dataset_type: expected" in proc.stderr
