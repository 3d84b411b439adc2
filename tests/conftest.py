"""Shared fixtures. Real-data tests use ``real_data``: they skip on a user's machine without
the datasets, and fail in CI (``CI=true``), where the data must be present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mgrec.paths import data_root


def _require(folder: str) -> Path:
    path = data_root() / folder
    if not path.is_dir():
        msg = f"real dataset folder missing: {path} (set MGREC_DATA)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def real_data():
    """Call ``real_data("ml-100k")`` to get that dataset's folder under the data root."""
    return _require
