"""The behaviour granularity's linear item-item part: ``s(u, v) = scale * (x_u B)_v``.

``B`` is the closed-form EASE weight matrix (Steck, WWW 2019) of the binary training matrix
``X``, computed once when the fused model is fitted. It reads a user's *whole* training
history ``x_u``, where the neural set encoder reads the latest ``max_len`` events through a
non-linear bottleneck; on unordered data (a random split) the two make complementary errors.

The part keeps scoring a dot product: ``B ~ L R^T`` (exactly ``L = B``, ``R = I`` for a
catalogue up to ``max_rank`` items, else the top ``max_rank`` singular triplets), so the
model's user and item vectors simply gain the blocks ``scale * x_u L`` and ``R_v``, and a
matmul or a MIPS index still ranks the catalogue. ``scale`` (and EASE's penalty, when several
are configured) is chosen on the validation split after the network is trained
(:func:`scale_grid`), in units of the ratio of the two parts' score spreads; ``0`` switches
the part off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["ItemItemPart", "fit_item_item", "scale_grid", "RELATIVE_SCALES"]

logger = logging.getLogger(__name__)

#: Candidate weights of the linear part relative to the neural part (score spread ratio).
RELATIVE_SCALES = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class ItemItemPart:
    """``scale * x_u L R_v^T`` for the ``n_base`` items the part was fitted on.

    Attributes:
        left: ``(n_base, r)`` float32 ``L``.
        right: ``(n_base, r)`` float32 ``R``.
        scale: the weight of the part in the score.
    """

    left: np.ndarray
    right: np.ndarray
    scale: float = 1.0

    @property
    def n_base(self) -> int:
        return int(self.left.shape[0])

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def user_vectors(self, history: sp.spmatrix) -> np.ndarray:
        """``(B, r)`` ``scale * x_u L`` from the rows of a user x item matrix (any weights:
        they are read as binary; columns beyond ``n_base``, added items, are ignored)."""
        x = sp.csr_matrix(history)[:, : self.n_base].astype(np.float32)
        x.data[:] = 1.0
        return np.asarray(x @ self.left, dtype=np.float32) * np.float32(self.scale)

    def item_vectors(self, n_items: int) -> np.ndarray:
        """``(n_items, r)`` ``R``; items added after fitting get zero rows."""
        if n_items <= self.n_base:
            return self.right[:n_items]
        return np.vstack([self.right, np.zeros((n_items - self.n_base, self.rank), np.float32)])

    def scores(self, history: sp.spmatrix, n_items: int) -> np.ndarray:
        """``(B, n_items)`` scores of the part."""
        return self.user_vectors(history) @ self.item_vectors(n_items).T


def fit_item_item(x: sp.spmatrix, reg: float, max_rank: int) -> ItemItemPart:
    """EASE on the binary ``x`` (users x items), factored as ``L R^T`` (scale 1).

    Args:
        x: the training interactions.
        reg: EASE's L2 penalty.
        max_rank: the most columns of ``L`` and ``R``; a catalogue up to this size is exact.
    """
    from mgrec.baselines.ease import FLOAT64_MAX_ITEMS, ease_weights

    x = sp.csr_matrix(x, dtype=np.float32)
    x.data[:] = 1.0
    n = x.shape[1]
    dtype = torch.float64 if n <= FLOAT64_MAX_ITEMS else torch.float32
    b = ease_weights(x, reg, dtype=dtype)
    if n <= max_rank:
        return ItemItemPart(b, np.eye(n, dtype=np.float32))
    if n <= 4096:
        u, s, vt = np.linalg.svd(b, full_matrices=False)
        u, s, vt = u[:, :max_rank], s[:max_rank], vt[:max_rank]
    else:
        u, s, vt = _randomized_svd(b, max_rank, np.random.default_rng(0))
    logger.info("item-item part: rank %d of %d keeps %.1f%% of B's Frobenius norm", max_rank, n,
                100 * float(np.sqrt((s**2).sum()) / max(np.linalg.norm(b), 1e-12)))
    return ItemItemPart((u * s).astype(np.float32), np.ascontiguousarray(vt.T, dtype=np.float32))


def _randomized_svd(a: np.ndarray, rank: int, rng: np.random.Generator, *, oversample: int = 16,
                    power: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``rank`` singular triplets of a dense ``a`` by a randomized range finder with
    ``power`` subspace iterations (Halko, Martinsson and Tropp, SIAM Review 2011): a few
    ``n x n x (rank + oversample)`` matrix products instead of a full ``O(n^3)`` SVD."""
    q, _ = np.linalg.qr(a @ rng.standard_normal((a.shape[1], rank + oversample), dtype=np.float32))
    for _ in range(power):
        q, _ = np.linalg.qr(a.T @ q)
        q, _ = np.linalg.qr(a @ q)
    u, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ u)[:, :rank], s[:rank], vt[:rank]


def scale_grid(neural: np.ndarray, linear: np.ndarray, relative: tuple[float, ...] = RELATIVE_SCALES) -> list[float]:
    """Absolute scales for ``relative`` weights: ``a * std(neural) / std(linear)``, the spreads
    measured on sample score matrices of the two parts."""
    spread = float(np.std(linear))
    ratio = float(np.std(neural)) / spread if spread > 0 else 0.0
    return [a * ratio for a in relative]
