"""Granularity ``item``: the user's taste in content space (see :class:`ItemContentEncoder`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mgrec.encoders.base import Batch
from mgrec.sparse import sparse_product

if TYPE_CHECKING:
    from mgrec.encoders.item import ItemTower

__all__ = ["ItemContentEncoder"]


class ItemContentEncoder(nn.Module):
    """Granularity ``item``: the user's taste in content space.

    The weighted mean of the tower's content vectors over the history (weights = event
    strengths ``hist_weights``; uniform when all of a row's strengths are zero; padding
    ignored), through a linear layer. Present when the row has history and the tower uses
    content.

    Args:
        tower: the shared item tower (held by reference, not registered as a submodule, so
            its parameters appear once, under the model that owns the tower).
        dim: the output size ``D``.
    """

    granularity = "item"

    def __init__(self, tower: ItemTower, dim: int) -> None:
        super().__init__()
        self._tower = (tower,)
        self.out_dim = int(dim)
        self.proj = nn.Linear(tower.dim, dim)

    @property
    def tower(self) -> ItemTower:
        return self._tower[0]

    def shared_modules(self) -> dict[str, nn.Module]:
        """Modules this encoder uses but does not own (the model registers them once)."""
        return {"item_tower": self.tower}

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(vectors (B, D), present (B,) bool)``."""
        hist = batch.hist_items
        valid = hist != self.tower.n_items
        w = torch.where(valid, batch.hist_weights.clamp(min=0.0), torch.zeros_like(batch.hist_weights))
        no_strength = w.sum(dim=1, keepdim=True) <= 0
        w = torch.where(no_strength, valid.to(w.dtype), w)
        w = w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)
        taste = self.tower.pooled_content(hist, w)
        present = valid.any(dim=1) & self.tower.use_content
        return self.proj(taste) * present.unsqueeze(-1).to(taste.dtype), present

    def history_tastes(
        self, items: np.ndarray, weights: np.ndarray, indptr: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for many histories given flat, as one sparse product.

        Sequence training serves each target from the events before it, and the targets of
        one user share most of those events. A sparse (history × item) matrix of the events'
        weights, times the catalogue's content vectors, gives every history's taste; its
        backward pass is the transposed product, with no ``(R, L, D)`` gather.

        Args:
            items: item codes of all histories' events, history after history.
            weights: their event strengths (weighted as :meth:`forward` does: clamped at 0 and
                divided by their sum, or uniform when they sum to zero).
            indptr: ``(R + 1,)`` history ``r`` is ``items[indptr[r]:indptr[r + 1]]``; an empty
                one is a history without events.

        Returns:
            ``(vectors (R, D), present (R,) bool)``, equal to :meth:`forward` on a batch
            whose rows hold those histories.
        """
        n = np.diff(indptr)
        w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
        strength = np.bincount(np.repeat(np.arange(len(n)), n), weights=w, minlength=len(n))
        # strength-weighted mean; uniform over the events when a history has no strength
        w = np.where(np.repeat(strength <= 0, n), 1.0, w) / np.repeat(np.where(strength > 0, strength, n), n)
        matrix = sp.csr_matrix((w.astype(np.float32), items, indptr), shape=(len(n), self.tower.n_items))
        taste = sparse_product(self.tower.content(None), matrix)
        present = torch.from_numpy(n > 0).to(taste.device) & self.tower.use_content
        return self.proj(taste) * present.unsqueeze(-1).to(taste.dtype), present
