"""The fused network: ``score(v | u, c) = q_v . p_{u,c}``.

:class:`MGRNet` wires built modules together: the item tower gives ``q_v``, one encoder per
granularity gives ``v_g`` (with a per-row presence flag) and the fusion turns them into
``p_{u,c}``. It also explains scores: :meth:`MGRNet.contributions` splits each score into
one term per granularity (exact for the weighted fusion, leave-one-out deltas otherwise).

Encoders that reuse modules they do not own (the item tower, the user id table) expose
them through ``shared_modules()``; the network registers each such module exactly once (the
tower as ``item_tower``, anything else under ``shared``), so ``state_dict`` holds every
tensor once and saves with ``safetensors`` as is.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mgrec.encoders import init_module, set_generator
from mgrec.encoders.base import GRANULARITIES, Batch
from mgrec.encoders.item import ItemTower
from mgrec.fusion import WeightedFusion

__all__ = ["MGRNet", "init_module", "set_generator"]


class MGRNet(nn.Module):
    """Item tower + granularity encoders + fusion.

    Args:
        item_tower: the item tower (``q_v``).
        encoders: granularity -> encoder; each key must equal the encoder's
            ``granularity`` and be one of the fusion's granularities.
        fusion: a fusion from :data:`mgrec.fusion.FUSIONS` built over (at least) these
            granularities.
        bias_coordinate: reserve the last coordinate of ``p`` for a constant: each present
            granularity's vector ends in 1 (0 where absent), and so does ``p`` of any row with a
            present granularity (the weighted and gated fusions give it by construction, the
            others are set to it). The last coordinate of ``q_v`` then acts as an item bias
            ``b_v`` that the item tower computes from the item's id, content and popularity,
            and the score ``q_v . p`` includes it while staying one dot product. It gives every
            user, new ones included, the catalogue's prior without spending a direction of
            ``p`` on it.

    Raises:
        ValueError: for inconsistent encoders and fusion.
    """

    def __init__(self, item_tower: ItemTower, encoders: Mapping[str, nn.Module], fusion: nn.Module, *,
                 bias_coordinate: bool = False) -> None:
        super().__init__()
        self.bias_coordinate = bool(bias_coordinate)
        if not encoders:
            raise ValueError("the network needs at least one granularity encoder")
        fused = list(getattr(fusion, "granularities", []))
        for g, enc in encoders.items():
            if g not in GRANULARITIES or getattr(enc, "granularity", None) != g:
                raise ValueError(f"encoder under {g!r} has granularity "
                                 f"{getattr(enc, 'granularity', None)!r}")
            if g not in fused:
                raise ValueError(f"the fusion does not cover granularity {g!r} (it fuses {fused})")
        self.item_tower = item_tower
        self.encoders = nn.ModuleDict({g: encoders[g] for g in GRANULARITIES if g in encoders})
        self.fusion = fusion
        self.shared = nn.ModuleDict()
        owned = {id(m) for m in self.modules()}
        for enc in self.encoders.values():
            extra = enc.shared_modules() if hasattr(enc, "shared_modules") else {}
            for name, module in extra.items():
                if id(module) not in owned:
                    self.shared[name] = module
                    owned.update(id(m) for m in module.modules())

    @property
    def granularities(self) -> list[str]:
        """The granularities with an encoder, in :data:`GRANULARITIES` order."""
        return list(self.encoders.keys())

    @property
    def n_items(self) -> int:
        return self.item_tower.n_items

    def reset_parameters(self, generator: torch.Generator) -> MGRNet:
        """Re-initialise every parameter from ``generator`` (see :func:`init_module`)."""
        init_module(self, generator)
        return self

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Draw all training noise (dropout, id dropout) from ``generator``."""
        set_generator(self, generator)

    def user_vectors(
        self,
        batch: Batch,
        *,
        drop: frozenset[str] = frozenset(),
        given: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Encode every granularity and fuse.

        Args:
            batch: ``B`` rows.
            drop: granularities treated as absent (ablation, leave-one-out explanations).
            given: granularity -> ``(vectors (B, D), present (B,))`` computed elsewhere (the
                sequence encoder's states, shared by every target of a window); those
                encoders are not run.

        Returns:
            ``(p (B, D), fusion weights (B, G) or None, parts, present)``; ``parts`` and
            ``present`` map each granularity to ``(B, D)`` vectors and ``(B,)`` flags
            (a dropped one: zeros and False).
        """
        parts: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        b = len(batch)
        for g, enc in self.encoders.items():
            if g in drop:
                parts[g] = batch.time.new_zeros(b, enc.out_dim, dtype=self._dtype)
                present[g] = torch.zeros(b, dtype=torch.bool, device=batch.users.device)
            elif given is not None and g in given:
                parts[g], present[g] = given[g]
            else:
                parts[g], present[g] = enc(batch)
            if self.bias_coordinate:
                parts[g] = _with_last(parts[g], present[g])
        p, weights = self.fusion(parts, present)
        if self.bias_coordinate and weights is None:  # product, deep: the fused last coordinate is not 1
            p = _with_last(p, torch.stack([present[g] for g in parts], dim=1).any(dim=1))
        return p, weights, parts, present

    def item_vectors(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n_items, D)`` item vectors (no padding row)."""
        return self.item_tower(None, generator=generator)

    def score(self, batch: Batch) -> torch.Tensor:
        """``(B, n_items)`` scores ``p_{u,c} . q_v`` over the whole catalogue."""
        with self.item_tower.shared_content():
            p, _, _, _ = self.user_vectors(batch)
            return p @ self.item_vectors().T

    def contributions(self, batch: Batch, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each granularity's share of the scores of ``items``.

        With a :class:`~mgrec.fusion.WeightedFusion` the shares are exact,
        ``w_g (v_g . q_v)``, and sum to the score. With any other fusion they are
        leave-one-out deltas ``score(all) - score(without g)`` (0 where ``g`` is absent).

        Args:
            batch: ``B`` rows.
            items: ``(B, K)`` int64 item codes.

        Returns:
            Granularity -> ``(B, K)`` contributions, in :attr:`granularities` order.
        """
        with self.item_tower.shared_content():
            q = self.item_tower(items)  # (B, K, D)
            p, weights, parts, _ = self.user_vectors(batch)
            if isinstance(self.fusion, WeightedFusion) and weights is not None:
                index = {g: i for i, g in enumerate(self.fusion.granularities)}
                return {g: weights[:, index[g], None] * (q @ parts[g].unsqueeze(-1)).squeeze(-1)
                        for g in self.granularities}
            full = (q @ p.unsqueeze(-1)).squeeze(-1)
            out: dict[str, torch.Tensor] = {}
            for g in self.granularities:
                p_g, _, _, _ = self.user_vectors(batch, drop=frozenset({g}))
                out[g] = full - (q @ p_g.unsqueeze(-1)).squeeze(-1)
            return out

    @property
    def _dtype(self) -> torch.dtype:
        return self.item_tower.id_embedding.weight.dtype


def _with_last(v: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
    """``v`` with its last coordinate replaced by ``flag`` (1.0 or 0.0)."""
    return torch.cat([v[:, :-1], flag.to(v.dtype).unsqueeze(-1)], dim=1)
