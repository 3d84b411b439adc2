"""Reference models every new recommender is measured against: Pop, ItemKNN, EASE and BPR-MF.

Each model subclasses :class:`mgrec.recommender.Recommender`, takes a config dict checked
against its typed config dataclass (unknown keys are a :class:`~mgrec.errors.ConfigError`)
and an explicit ``seed``.

The classes are imported lazily, so ``import mgrec.baselines`` stays cheap and the model
modules can import the small helpers defined here without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from mgrec.errors import ConfigError

__all__ = ["Pop", "ItemKNN", "EASE", "BPRMF", "MultiVAE", "LightGCN", "SASRec", "check_users", "check_fitted"]

_LAZY = {
    "Pop": "mgrec.baselines.pop",
    "PopConfig": "mgrec.baselines.pop",
    "ItemKNN": "mgrec.baselines.itemknn",
    "ItemKNNConfig": "mgrec.baselines.itemknn",
    "EASE": "mgrec.baselines.ease",
    "EASEConfig": "mgrec.baselines.ease",
    "BPRMF": "mgrec.baselines.bprmf",
    "BPRMFConfig": "mgrec.baselines.bprmf",
    "MultiVAE": "mgrec.baselines.multivae",
    "MultiVAEConfig": "mgrec.baselines.multivae",
    "LightGCN": "mgrec.baselines.lightgcn",
    "LightGCNConfig": "mgrec.baselines.lightgcn",
    "SASRec": "mgrec.baselines.sasrec",
    "SASRecConfig": "mgrec.baselines.sasrec",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mgrec.baselines' has no attribute {name!r}")


def check_fitted(ok: bool, model: str) -> None:
    """Raise a clear error when a model is used before :meth:`fit` (or :meth:`load`).

    Args:
        ok: whether the model holds trained state.
        model: the model's name, for the message.

    Raises:
        ConfigError: when ``ok`` is false.
    """
    if not ok:
        raise ConfigError(
            f"{model}: the model is not fitted; call fit() or Recommender.load() first"
        )


def check_users(users: np.ndarray, n_users: int) -> np.ndarray:
    """Validate user codes before indexing with them.

    Args:
        users: user codes, any integer array-like of shape ``(B,)``.
        n_users: number of users the model was trained with.

    Returns:
        ``users`` as a 1-d ``int64`` array.

    Raises:
        ConfigError: for a code outside ``0 .. n_users-1``.
    """
    arr = np.atleast_1d(np.asarray(users))
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"user codes must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n_users):
        bad = int(arr[(arr < 0) | (arr >= n_users)][0])
        raise ConfigError(f"user code {bad} is out of range (the model knows {n_users} users)")
    return arr
