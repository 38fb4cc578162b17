"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference" / "sd2_checkpoint_layouts"

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GLOG_v", "3")


def pytest_configure(config):
    # MindSpore fixes its device once the first kernel has run; setting it here, before any test,
    # makes the fixtures' own ms.set_device("CPU") calls no-ops whatever order the tests run in.
    import mindspore as ms

    ms.set_device("CPU")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The real SD 2.x checkpoint layouts, kept beside the checkout (../shared/reference)."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference layouts not found at {REFERENCE_DIR} (CI keeps ../shared beside the checkout)")
    return REFERENCE_DIR
