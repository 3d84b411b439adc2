"""Pop: recommend the items with the most training interactions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mgrec.baselines import check_fitted, check_users
from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset
from mgrec.recommender import Recommender

__all__ = ["Pop", "PopConfig", "popularity_scores"]

logger = logging.getLogger(__name__)


@dataclass
class PopConfig:
    """Pop has no hyperparameters; the dataclass exists so unknown keys are rejected."""


def popularity_scores(counts: np.ndarray) -> np.ndarray:
    """Scores whose integer part is the count and whose fraction breaks ties by item code.

    Within a group of items with the same count, the item with the lower code gets the
    larger fraction (all fractions lie in ``[0, 0.5]``), so ``floor(score) == count`` and the
    ranking is total and reproducible. If ``float32`` cannot hold a fraction exactly enough
    (counts times group sizes beyond about ``2**22``), the scores fall back to
    ``n_items - rank``, which orders items identically but loses the count.

    Args:
        counts: ``(n_items,)`` non-negative interaction counts.

    Returns:
        ``(n_items,)`` ``float32`` scores; distinct whenever items differ.

    Example:
        >>> popularity_scores(np.array([2, 5, 2])).tolist()
        [2.5, 5.5, 2.0]
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    if n == 0:
        return np.zeros(0, np.float32)
    order = np.lexsort((np.arange(n), -counts))  # best first; equal counts by lower code
    sorted_counts = counts[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_counts)) + 1]
    lengths = np.diff(np.r_[starts, n])
    pos = np.arange(n) - np.repeat(starts, lengths)  # place in its group of equal counts
    group_len = np.repeat(lengths, lengths)
    frac = np.where(group_len > 1, 0.5 * (group_len - 1 - pos) / np.maximum(group_len - 1, 1), 0.5)
    scores = np.empty(n, np.float64)
    scores[order] = sorted_counts + frac
    out = scores.astype(np.float32)
    if np.any(np.diff(out[order]) >= 0):  # float32 merged two neighbours
        logger.warning("popularity counts too large for float32 tie-breaks; using rank scores")
        out = np.empty(n, np.float32)
        out[order] = np.arange(n, 0, -1, dtype=np.float32)
    return out


class Pop(Recommender):
    """Most-popular baseline: every user gets the same ranking, by training interactions.

    An item's count is the number of training rows (events) that name it; repeated events
    count again. Equal counts are ordered by item code (lower code first); see
    :func:`popularity_scores`.

    Args:
        config: a dict for :class:`PopConfig` (empty).
        seed: unused; accepted so every model is built the same way.
    """

    name = "pop"

    def __init__(self, config: dict[str, Any] | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = from_dict(PopConfig, config, where="pop config")
        self.seed = int(seed)
        self.counts_: np.ndarray | None = None
        self.scores_: np.ndarray | None = None

    def _fit(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        items = train["item"].to_numpy(dtype=np.int64)
        self.counts_ = np.bincount(items, minlength=self.n_items_).astype(np.int64)
        self.scores_ = popularity_scores(self.counts_)
        logger.info("pop: %d items, most popular has %d interactions", self.n_items_,
                    int(self.counts_.max()) if len(self.counts_) else 0)

    def score(self, users: np.ndarray) -> np.ndarray:
        """The same popularity scores for every user: ``(B, n_items)`` ``float32``."""
        check_fitted(self.scores_ is not None, self.name)
        users = check_users(users, self.n_users_)
        return np.broadcast_to(self.scores_, (len(users), self.n_items_)).copy()

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        check_fitted(self.counts_ is not None, self.name)
        return to_dict(self.config), {"counts": self.counts_}

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.config = from_dict(PopConfig, config, where="pop config")
        self.seed = 0
        counts = np.asarray(arrays["counts"], dtype=np.int64)
        if counts.shape != (self.n_items_,):
            raise ValueError(f"counts has shape {counts.shape}, expected ({self.n_items_},)")
        self.counts_ = counts
        self.scores_ = popularity_scores(counts)
