"""Fusing one vector per granularity into the user-in-context vector ``p_{u,c}``.

Every fusion takes ``parts`` (granularity -> ``(B, D)``) and ``present`` (granularity ->
``(B,)`` bool) and returns ``(p (B, D), weights (B, G) | None)``, ``G`` ordered as the
``granularities`` it was built with. A granularity that is absent for a row (or missing
from ``parts`` altogether) counts as a zero vector and never receives weight, and a row with
nothing present gets ``p = 0``.

* ``weighted``: learned global logits, softmax over the present granularities of each row,
  ``p = sum_g w_g v_g``; so the contribution of ``g`` to a score is exactly
  ``w_g (v_g . q)``.
* ``product``: FM-style second order, ``p = sum_g v_g + sum_{g<h} v_g * v_h`` (elementwise),
  computed as ``s + (s*s - sum_g v_g*v_g) / 2`` with ``s = sum_g v_g``.
* ``deep``: an MLP over the concatenated parts and presence flags.
* ``gated``: per-row attention: an MLP over the concatenation gives logits, masked to the
  present granularities, softmax, ``p = sum_g w_g v_g``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mgrec.encoders import masked_softmax
from mgrec.encoders.base import GRANULARITIES
from mgrec.errors import ConfigError

__all__ = ["FUSIONS", "DeepFusion", "GatedFusion", "ProductFusion", "WeightedFusion", "make_fusion"]


class _Fusion(nn.Module):
    """Shared plumbing: stack parts in a fixed order with absent ones zeroed."""

    def __init__(self, granularities: Sequence[str], dim: int) -> None:
        super().__init__()
        unknown = [g for g in granularities if g not in GRANULARITIES]
        if unknown or not granularities or len(set(granularities)) != len(granularities):
            raise ValueError(f"granularities must be distinct members of {GRANULARITIES}, "
                             f"got {list(granularities)}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.granularities = list(granularities)
        self.dim = int(dim)

    def _stack(
        self, parts: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V (B, G, D) with absent rows zeroed, mask (B, G) bool)``."""
        ref = next(iter(parts.values()))
        b = ref.shape[0]
        vs, ms = [], []
        for g in self.granularities:
            if g in parts:
                m = present[g].to(torch.bool)
                vs.append(parts[g] * m.unsqueeze(-1).to(ref.dtype))
                ms.append(m)
            else:
                vs.append(ref.new_zeros(b, self.dim))
                ms.append(torch.zeros(b, dtype=torch.bool, device=ref.device))
        return torch.stack(vs, dim=1), torch.stack(ms, dim=1)

    @staticmethod
    def _zero_empty(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return p * mask.any(dim=1, keepdim=True).to(p.dtype)


class WeightedFusion(_Fusion):
    """``p = sum_g w_g v_g`` with ``w`` = softmax of global logits over the present parts.

    Args:
        granularities: the fused granularities, in order.
        dim: the vector size ``D``.
    """

    def __init__(self, granularities: Sequence[str], dim: int) -> None:
        super().__init__(granularities, dim)
        self.logits = nn.Parameter(torch.zeros(len(self.granularities)))

    def forward(
        self, parts: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v, mask = self._stack(parts, present)
        w = masked_softmax(self.logits.expand(mask.shape), mask)
        return (w.unsqueeze(-1) * v).sum(dim=1), w


class ProductFusion(_Fusion):
    """``p = sum_g v_g + sum_{g<h} v_g * v_h`` (no weights; returns ``None``)."""

    def forward(
        self, parts: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, None]:
        v, _ = self._stack(parts, present)
        s = v.sum(dim=1)
        return s + 0.5 * (s * s - (v * v).sum(dim=1)), None


class DeepFusion(_Fusion):
    """A two-layer MLP over ``[v_1, ..., v_G, present flags]`` (returns no weights).

    Args:
        granularities: the fused granularities, in order.
        dim: the vector size ``D`` (also the hidden width times two).
    """

    def __init__(self, granularities: Sequence[str], dim: int) -> None:
        super().__init__(granularities, dim)
        g = len(self.granularities)
        self.mlp = nn.Sequential(nn.Linear(g * dim + g, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(
        self, parts: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, None]:
        v, mask = self._stack(parts, present)
        x = torch.cat([v.flatten(1), mask.to(v.dtype)], dim=1)
        return self._zero_empty(self.mlp(x), mask), None


class GatedFusion(_Fusion):
    """Per-row attention over the present parts: ``p = sum_g w_g(row) v_g``.

    Args:
        granularities: the fused granularities, in order.
        dim: the vector size ``D``.
    """

    def __init__(self, granularities: Sequence[str], dim: int) -> None:
        super().__init__(granularities, dim)
        g = len(self.granularities)
        self.gate = nn.Sequential(nn.Linear(g * dim + g, dim), nn.Tanh(), nn.Linear(dim, g))

    def forward(
        self, parts: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v, mask = self._stack(parts, present)
        x = torch.cat([v.flatten(1), mask.to(v.dtype)], dim=1)
        w = masked_softmax(self.gate(x), mask)
        return (w.unsqueeze(-1) * v).sum(dim=1), w


#: Fusion name -> class; each is built as ``cls(granularities, dim)``.
FUSIONS: dict[str, type[_Fusion]] = {
    "weighted": WeightedFusion,
    "product": ProductFusion,
    "deep": DeepFusion,
    "gated": GatedFusion,
}


def make_fusion(name: str, granularities: Sequence[str], dim: int) -> nn.Module:
    """Build the fusion called ``name``.

    Args:
        name: a key of :data:`FUSIONS`.
        granularities: the fused granularities, in order.
        dim: the vector size ``D``.

    Returns:
        The fusion module.

    Raises:
        ConfigError: for an unknown name.
    """
    if name not in FUSIONS:
        raise ConfigError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}")
    return FUSIONS[name](granularities, dim)
