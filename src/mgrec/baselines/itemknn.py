"""ItemKNN: item-item cosine neighbourhoods on the binary interaction matrix.

The similarity of items ``i`` and ``j`` is ``c_ij / (sqrt(n_i) * sqrt(n_j) + shrink)`` where
``c_ij`` counts the users who have both and ``n_i`` the users who have ``i``. For every target
item only its ``k`` most similar items are kept, so the model stores ``O(n_items * k)``
numbers; the similarity is computed a block of target items at a time and the dense
``n_items x n_items`` matrix never exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mgrec.baselines import check_fitted, check_users
from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset
from mgrec.recommender import Recommender

__all__ = ["ItemKNN", "ItemKNNConfig", "cosine_topk"]

logger = logging.getLogger(__name__)

#: Bytes the dense similarity block of one chunk of target items may take.
BLOCK_BYTES = 64 * 2**20


@dataclass
class ItemKNNConfig:
    """ItemKNN hyperparameters.

    Attributes:
        k: neighbours kept per target item.
        shrink: added to the cosine denominator; damps similarities built on few users.
    """

    k: int = 100
    shrink: float = 0.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {self.shrink}")


def cosine_topk(
    x: sp.csr_matrix, k: int, *, shrink: float = 0.0, block_bytes: int = BLOCK_BYTES
) -> sp.csr_matrix:
    """Top-``k`` cosine item-item similarity, computed one block of columns at a time.

    Args:
        x: ``(n_users, n_items)`` binary interaction matrix.
        k: neighbours kept for each target item (column); the diagonal is never kept, nor
            are similarities that are zero.
        shrink: added to the denominator ``sqrt(n_i) * sqrt(n_j)``.
        block_bytes: memory budget for one block of target items (the dense similarity
            block and its temporaries take about 40 bytes per ``(item, target)`` entry).

    Returns:
        ``(n_items, n_items)`` ``float32`` CSR matrix ``S`` where column ``i`` holds the
        (at most ``k``) neighbours ``j`` of item ``i`` as ``S[j, i]``; so a user's scores are
        ``x_u @ S``. The kept entries are the ``k`` largest in each column; among equal
        values at the cut the choice is deterministic but unspecified.
    """
    x = sp.csr_matrix(x, dtype=np.float32)
    n_items = x.shape[1]
    if n_items == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    xt = x.T.tocsr()
    xc = x.tocsc()
    norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0)).ravel()).astype(np.float64)
    k = min(int(k), max(n_items - 1, 1))
    width = int(max(1, min(n_items, block_bytes // max(1, n_items * 40))))
    rows, cols, vals = [], [], []
    for start in range(0, n_items, width):
        stop = min(start + width, n_items)
        block = np.asarray((xt @ xc[:, start:stop]).todense(), dtype=np.float64)  # co-counts
        local = np.arange(stop - start)
        block[start + local, local] = 0.0
        denom = norms[:, None] * norms[None, start:stop] + shrink
        np.divide(block, denom, out=block, where=denom > 0)
        if k < n_items:
            top = np.argpartition(-block, k - 1, axis=0)[:k]
        else:
            top = np.broadcast_to(np.arange(n_items)[:, None], block.shape)
        top_vals = np.take_along_axis(block, top, axis=0)
        keep = top_vals > 0
        rows.append(top[keep].astype(np.int64))
        cols.append((start + np.broadcast_to(local, top.shape)[keep]).astype(np.int64))
        vals.append(top_vals[keep].astype(np.float32))
    sim = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
        dtype=np.float32,
    )
    sim.sort_indices()
    return sim


class ItemKNN(Recommender):
    """Item-based nearest neighbours: ``score(u) = x_u @ S`` with top-``k`` cosine ``S``.

    Args:
        config: a dict for :class:`ItemKNNConfig` (``k``, ``shrink``).
        seed: unused (the model is deterministic); accepted for a uniform constructor.
    """

    name = "itemknn"

    def __init__(self, config: dict[str, Any] | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = from_dict(ItemKNNConfig, config, where="itemknn config")
        self.seed = int(seed)
        self.sim_: sp.csr_matrix | None = None

    def _fit(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        assert self.seen_ is not None
        self.sim_ = cosine_topk(self.seen_, self.config.k, shrink=self.config.shrink)
        logger.info(
            "itemknn: %d items, %d neighbour links (k=%d, shrink=%g)",
            self.n_items_, self.sim_.nnz, self.config.k, self.config.shrink,
        )

    def score(self, users: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` ``float32``: the sum of similarities to each user's training items."""
        check_fitted(self.sim_ is not None and self.seen_ is not None, self.name)
        users = check_users(users, self.n_users_)
        out = self.seen_[users] @ self.sim_
        return np.asarray(out.todense(), dtype=np.float32)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        check_fitted(self.sim_ is not None, self.name)
        sim = self.sim_
        return to_dict(self.config), {
            "sim_data": sim.data.astype(np.float32),
            "sim_indices": sim.indices.astype(np.int64),
            "sim_indptr": sim.indptr.astype(np.int64),
        }

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.config = from_dict(ItemKNNConfig, config, where="itemknn config")
        self.seed = 0
        n = self.n_items_
        indptr = arrays["sim_indptr"]
        if indptr.shape != (n + 1,):
            raise ValueError(f"sim_indptr has shape {indptr.shape}, expected ({n + 1},)")
        sim = sp.csr_matrix((arrays["sim_data"], arrays["sim_indices"], indptr), shape=(n, n))
        sim.check_format(full_check=True)
        self.sim_ = sim
