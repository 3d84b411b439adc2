"""Granularity ``item``: the user's taste in content space (see :class:`ItemContentEncoder`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mgrec.encoders.base import Batch

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

    def window_tastes(
        self, items: torch.Tensor, weights: torch.Tensor, block: torch.Tensor, start: torch.Tensor, stop: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for many histories that are runs of a few event sequences.

        Sequence training serves each target from the events before it; the targets of one
        block share most of those events. The content vectors of each block's events are
        looked up once and summed by prefix sums, instead of once per target.

        Args:
            items: ``(W, S)`` item codes of each block's events in time order (padding item
                where there is none).
            weights: ``(W, S)`` their event strengths.
            block: ``(R,)`` each history's block.
            start: ``(R,)`` its first event's column.
            stop: ``(R,)`` one past its last event's column.

        Returns:
            ``(vectors (R, D), present (R,) bool)``, equal to :meth:`forward` on a batch
            whose rows hold those histories.
        """
        valid = items != self.tower.n_items
        dtype = self.proj.weight.dtype
        mask = valid.to(dtype)
        w = torch.where(valid, weights.to(dtype).clamp(min=0.0), torch.zeros_like(mask))
        content = self.tower.content(items)  # (W, S, D)

        def prefix(x: torch.Tensor) -> torch.Tensor:  # (W, S + 1, ...) sums of the first j columns
            return torch.cat([torch.zeros_like(x[:, :1]), x.cumsum(dim=1)], dim=1)

        def run(x: torch.Tensor) -> torch.Tensor:  # each history's sum over its columns
            p = prefix(x)
            return p[block, stop] - p[block, start]

        n, strength = run(mask), run(w)
        weighted = run(content * w.unsqueeze(-1))
        plain = run(content * mask.unsqueeze(-1))
        # strength-weighted mean; uniform over the real events when a history has no strength
        use = (strength > 0).unsqueeze(-1)
        taste = torch.where(use, weighted / strength.clamp(min=1e-12).unsqueeze(-1),
                            plain / n.clamp(min=1.0).unsqueeze(-1))
        present = (n > 0) & self.tower.use_content
        return self.proj(taste) * present.unsqueeze(-1).to(taste.dtype), present
