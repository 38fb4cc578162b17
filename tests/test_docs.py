"""The docs stay true to the code: the CLI reference is generated from the parsers, README commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_cli_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_cli_reference.py"), "--check"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cli_reference_lists_every_training_flag():
    from mindone.train.options import TRAIN_OPTIONS

    text = (REPO / "docs" / "cli_reference.md").read_text()
    missing = [o.name for o in TRAIN_OPTIONS if f"`--{o.name}`" not in text]
    assert not missing
