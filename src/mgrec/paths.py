"""Where mgrec looks for datasets and caches."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_root", "cache_dir"]


def cache_dir() -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/mgrec`` or ``~/.cache/mgrec``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mgrec"


def data_root(override: str | Path | None = None) -> Path:
    """The folder that holds one sub-folder per dataset.

    Order: the explicit ``override`` (``--data-root``), then ``$MGREC_DATA``, then
    ``cache_dir() / "data"`` (where ``mgrec data fetch`` downloads to).
    """
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("MGREC_DATA")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "data"
