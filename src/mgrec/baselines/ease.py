"""EASE: the closed-form shallow autoencoder of Steck (2019), "Embarrassingly Shallow
Autoencoders for Sparse Data", WWW 2019.

With the binary user x item matrix ``X``::

    G = X^T X + reg * I,   P = G^-1,   B = -P / diag(P)  (column-wise),   diag(B) = 0

and a user's scores are ``x_u @ B``. ``B`` is a dense ``n_items x n_items`` matrix, so the
model refuses catalogues larger than ``max_items``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mgrec.baselines import check_fitted, check_users
from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset
from mgrec.errors import ConfigError
from mgrec.recommender import Recommender

__all__ = ["EASE", "EASEConfig", "ease_weights"]

logger = logging.getLogger(__name__)

#: Up to this many items the inverse is computed in float64 (at most 1 GiB for the two dense
#: matrices alive at once); above it in float32, which is accurate enough for ``reg >= 1``.
FLOAT64_MAX_ITEMS = 8_192


@dataclass
class EASEConfig:
    """EASE hyperparameters.

    Attributes:
        reg: L2 penalty ``lambda`` added to the diagonal of the Gram matrix.
        max_items: refuse catalogues with more items (``B`` takes ``4 * n_items**2`` bytes and
            the solve twice that).
    """

    reg: float = 250.0
    max_items: int = 40_000

    def __post_init__(self) -> None:
        if self.reg <= 0:
            raise ValueError(f"reg must be > 0 (the Gram matrix may be singular), got {self.reg}")
        if self.max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {self.max_items}")


def ease_weights(x: sp.spmatrix, reg: float, *, dtype: torch.dtype = torch.float64) -> np.ndarray:
    """The EASE item-item weight matrix ``B`` (zero diagonal).

    Args:
        x: ``(n_users, n_items)`` interaction matrix (binary for implicit feedback).
        reg: L2 penalty added to the diagonal of ``X^T X``; must be positive.
        dtype: precision of the Cholesky inverse (``torch.float64`` or ``torch.float32``).

    Returns:
        ``(n_items, n_items)`` ``float32`` array ``B``.
    """
    x = sp.csr_matrix(x, dtype=np.float64 if dtype == torch.float64 else np.float32)
    # At most two dense n x n matrices are alive at any time.
    gram = torch.from_numpy(np.asarray((x.T @ x).todense()))
    gram.diagonal().add_(float(reg))
    chol = torch.linalg.cholesky(gram)
    del gram
    p = torch.cholesky_inverse(chol)
    del chol
    p.div_(-p.diagonal().clone()[None, :])  # B_ij = -P_ij / P_jj
    p.diagonal().zero_()
    return p.numpy().astype(np.float32, copy=False)


class EASE(Recommender):
    """Embarrassingly Shallow AutoEncoder (Steck 2019), closed form.

    Args:
        config: a dict for :class:`EASEConfig` (``reg``, ``max_items``).
        seed: unused (the solution is unique); accepted for a uniform constructor.

    Raises:
        ConfigError: from :meth:`fit` when the catalogue has more than ``max_items`` items.
    """

    name = "ease"

    def __init__(self, config: dict[str, Any] | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = from_dict(EASEConfig, config, where="ease config")
        self.seed = int(seed)
        self.B_: np.ndarray | None = None

    def _fit(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        n = self.n_items_
        if n > self.config.max_items:
            gib = 4 * n * n / 2**30
            raise ConfigError(
                f"ease: {n} items is more than max_items={self.config.max_items}; the dense "
                f"{n} x {n} weight matrix needs {gib:.1f} GiB ({2 * gib:.1f} GiB while solving). "
                "Filter the dataset first (e.g. a k-core filter that drops rare items), or raise "
                "max_items in the ease config if the machine has the memory"
            )
        assert self.seen_ is not None
        dtype = torch.float64 if n <= FLOAT64_MAX_ITEMS else torch.float32
        # C order: scipy's sparse @ dense copies a non-contiguous right operand on every call
        self.B_ = np.ascontiguousarray(ease_weights(self.seen_, self.config.reg, dtype=dtype))
        logger.info("ease: solved %d x %d (reg=%g, %s)", n, n, self.config.reg, dtype)

    def score(self, users: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` ``float32``: ``x_u @ B`` for each user."""
        check_fitted(self.B_ is not None and self.seen_ is not None, self.name)
        users = check_users(users, self.n_users_)
        return np.asarray(self.seen_[users] @ self.B_, dtype=np.float32)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        check_fitted(self.B_ is not None, self.name)
        return to_dict(self.config), {"B": self.B_}

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.config = from_dict(EASEConfig, config, where="ease config")
        self.seed = 0
        b = np.asarray(arrays["B"], dtype=np.float32)
        if b.shape != (self.n_items_, self.n_items_):
            raise ValueError(f"B has shape {b.shape}, expected ({self.n_items_}, {self.n_items_})")
        self.B_ = np.ascontiguousarray(b)
