"""Granularity ``behavior``: what the user has been doing, from their recent history.

The input vectors are the item tower's own vectors of the history items (tied with the
output side, as in SASRec), optionally scaled by a learned gate on the event strength
(``sigmoid(a * log1p(weight) + b)``: a 5-star rating or a long listening streak can count
more than a 1-star one).

* ``mode="sequence"`` (time-ordered data): a SASRec-style causal transformer (Kang & McAuley,
  ICDM 2018) with learned positions counted from the most recent event, plus a log2
  time-gap embedding per event (the gap since the previous event). The output is the latest
  event's position. Nothing depends on the request time (the time granularity reads it), so,
  as in SASRec, training runs one causal pass per window of events and reads every target's
  state from the position of the event before it (:meth:`BehaviorEncoder.states`).
* ``mode="set"`` (unordered data, e.g. a random split): an order-free bag encoder,
  ``p = h + FF(h)`` with ``h = |H|^-1/2 sum_{j in H} g_j q_j`` (``g_j``: the strength gate).
  The sum is one fused gather (``embedding_bag``), so no ``(B, L, D)`` tensor is built: on
  ml-100k this halves the epoch time of an attention-pooled set at the same validation
  NDCG@10. No positions, no times. Two options suit collaborative filtering on unordered
  histories: ``hist_dropout`` drops whole history events while training (the denoising of
  Mult-DAE / EASE-style reconstruction), and ``linear`` adds a FISM-style linear item-item
  path ``|H|^-1/2 sum_{j in H} w_j`` with its own (untied) input embeddings ``w_j``, so
  ``q_v . p`` gains a low-rank item-item term.

Padding never changes the output: padded positions are zeroed, masked out as keys, and
positions are counted from the end, so extra left padding is invisible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mgrec.encoders import N_TIME_BUCKETS, GenDropout, bag_sum, time_buckets
from mgrec.encoders.base import Batch
from mgrec.encoders.item import ItemTower
from mgrec.errors import ConfigError

__all__ = ["BEHAVIOR_MODES", "BehaviorEncoder"]

#: The two ways of reading a history.
BEHAVIOR_MODES = ("sequence", "set")


class _FeedForward(nn.Module):
    """Pre-norm position-wise feed-forward sublayer (residual added by the caller)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), GenDropout(dropout), nn.Linear(dim, dim))
        self.drop = GenDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.net(self.norm(x)))


class _CausalBlock(nn.Module):
    """Pre-norm transformer block: masked multi-head self-attention + feed-forward."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = GenDropout(dropout)
        self.ff = _FeedForward(dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, n_queries: int | None = None) -> torch.Tensor:
        """``x`` ``(B, L, D)``; ``mask`` ``(B, 1, L, L)`` additive float mask: 0 where the
        query may see the key, ``-inf`` elsewhere; every query must see at least one key.

        ``n_queries``: compute only the last ``n_queries`` positions' outputs (every position
        is still a key), ``(B, n_queries, D)``: what a last block owes when only those are read.
        """
        b, n, d = x.shape
        h = self.norm(x)
        if n_queries is None or n_queries >= n:
            q, k, v = self.qkv(h).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            x, m = x[:, -n_queries:], n_queries
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(h[:, -m:], w[:d], bias[:d]).view(b, m, self.n_heads, self.head_dim).transpose(1, 2)
            k, v = F.linear(h, w[d:], bias[d:]).view(b, n, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            mask = mask[:, :, -m:]
        # softmax(q k^T / sqrt(dh) + mask) v over the allowed keys (masked ones get exactly 0),
        # in PyTorch's fused kernel. No dropout on the attention weights: a (B, H, L, L) mask
        # from a CPU generator costs more than the block
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, q.shape[2], d)
        x = x + self.drop(self.out(h))
        return x + self.ff(x)


class BehaviorEncoder(nn.Module):
    """The user's recent behaviour as one vector.

    Args:
        tower: the shared item tower (held by reference, not registered as a submodule).
        dim: the output size ``D``.
        mode: ``"sequence"`` (causal transformer) or ``"set"`` (order-free pooling).
        max_len: the most recent events used (and the number of learned positions).
        n_blocks: transformer blocks (sequence mode).
        n_heads: attention heads; must divide ``dim`` (sequence mode).
        dropout: dropout rate on the inputs and on every sublayer's output.
        weight_gate: scale each input vector by a learned gate on its event strength.
        n_time_buckets: log2 time-gap buckets, including bucket 0 for unknown gaps.
        hist_dropout: set mode, training only: probability of dropping a whole history event
            (a row never loses all of its events).
        linear: set mode: add the linear item-item path (see the module docstring).

    Raises:
        ConfigError: for an unknown mode or inconsistent sizes.
    """

    granularity = "behavior"

    def __init__(
        self,
        tower: ItemTower,
        dim: int,
        *,
        mode: str = "sequence",
        max_len: int = 50,
        n_blocks: int = 2,
        n_heads: int = 2,
        dropout: float = 0.2,
        weight_gate: bool = True,
        n_time_buckets: int = N_TIME_BUCKETS,
        hist_dropout: float = 0.0,
        linear: bool = False,
    ) -> None:
        super().__init__()
        if mode not in BEHAVIOR_MODES:
            raise ConfigError(f"behavior mode must be one of {BEHAVIOR_MODES}, got {mode!r}")
        if max_len < 1 or n_blocks < 0 or n_heads < 1 or dim % n_heads:
            raise ConfigError(f"behavior encoder: need max_len >= 1, n_blocks >= 0 and n_heads "
                              f"dividing dim; got {max_len}, {n_blocks}, {n_heads}, dim {dim}")
        self._tower = (tower,)
        self.out_dim, self.mode, self.max_len = int(dim), mode, int(max_len)
        self.n_time_buckets = int(n_time_buckets)
        self.in_proj = nn.Linear(tower.dim, dim, bias=False) if tower.dim != dim else nn.Identity()
        self.gate = nn.Linear(1, 1) if weight_gate else None
        self.in_drop = GenDropout(dropout)
        self.hist_drop = GenDropout(hist_dropout)
        self.linear = nn.Embedding(tower.n_items + 1, dim, padding_idx=tower.n_items) \
            if linear and mode == "set" else None
        if mode == "sequence":
            self.positions = nn.Embedding(max_len, dim)
            self.prev_gap = nn.Embedding(n_time_buckets, dim)
            self.blocks = nn.ModuleList(_CausalBlock(dim, n_heads, dropout) for _ in range(n_blocks))
            self.norm = nn.LayerNorm(dim)
        else:
            self.ff = _FeedForward(dim, dropout)

    @property
    def tower(self) -> ItemTower:
        return self._tower[0]

    def shared_modules(self) -> dict[str, nn.Module]:
        """Modules this encoder uses but does not own (the model registers them once)."""
        return {"item_tower": self.tower}

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(vectors (B, D), present (B,) bool)``."""
        if self.mode == "set":
            return self._set(batch)
        x, valid = self._inputs(batch)
        present = valid.any(dim=1)
        states = self._states(x, valid, batch.hist_times[:, -self.max_len:])
        b, n, _ = states.shape
        # the latest real event (the last column under the left-padding contract)
        cols = torch.arange(n, device=x.device).expand(b, n)
        last = torch.where(valid, cols, torch.zeros_like(cols)).max(dim=1).values
        out = states[torch.arange(b, device=x.device), last]
        return out * present.unsqueeze(-1).to(out.dtype), present

    def states(self, batch: Batch, last: int | None = None) -> torch.Tensor:
        """Sequence mode: ``(B, L', D)`` states of the last ``L' = min(L, max_len)`` positions;
        position ``i`` depends only on events ``<= i``; padded positions are zero.

        Args:
            batch: the rows.
            last: return only the last ``last`` positions' states (the same values; the final
                block then computes only those, the others still serve as its keys).

        Raises:
            ConfigError: in set mode.
        """
        if self.mode != "sequence":
            raise ConfigError("states() needs the sequence mode")
        x, valid = self._inputs(batch)
        states = self._states(x, valid, batch.hist_times[:, -self.max_len:], n_out=last)
        return states * valid[:, -states.shape[1]:].unsqueeze(-1).to(states.dtype)

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated input vectors ``(B, L', D)`` of the last ``max_len`` events and their mask;
        padded positions are exactly zero."""
        hist = batch.hist_items[:, -self.max_len:]
        valid = hist != self.tower.n_items
        # the (B, L) gate is applied inside the tower's lookup (in_proj is linear without
        # bias, so scaling before or after it is the same)
        return self.in_proj(self.tower(hist, scale=self._gate(batch))), valid

    def _gate(self, batch: Batch) -> torch.Tensor | None:
        """``(B, L')`` strength gates of the last ``max_len`` events, or ``None``."""
        if self.gate is None:
            return None
        strength = torch.log1p(batch.hist_weights[:, -self.max_len:].clamp(min=0.0))
        return torch.sigmoid(self.gate(strength.unsqueeze(-1))).squeeze(-1)

    def _states(
        self, x: torch.Tensor, valid: torch.Tensor, times: torch.Tensor, n_out: int | None = None
    ) -> torch.Tensor:
        n = x.shape[1]
        pos = torch.arange(self.max_len - n, self.max_len, device=x.device)
        t = times.to(torch.float64)
        nan = torch.full_like(t, float("nan"))
        prev_ok = torch.zeros_like(valid)
        prev_ok[:, 1:] = valid[:, 1:] & valid[:, :-1]
        gap = torch.cat([nan[:, :1], t[:, 1:] - t[:, :-1]], dim=1)
        gap = torch.where(prev_ok, gap, nan)
        x = x + self.positions(pos) + self.prev_gap(time_buckets(gap, self.n_time_buckets))
        keep = valid.unsqueeze(-1).to(x.dtype)
        x = self.in_drop(x) * keep
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        # a padded query also sees itself, so no row is fully masked (its output is zeroed
        # below; real queries never see padded keys)
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        allowed = ((causal.unsqueeze(0) & valid.unsqueeze(1)) | eye).unsqueeze(1)  # (B, 1, Lq, Lk)
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(~allowed, -math.inf)
        n_out = n if n_out is None else max(1, min(int(n_out), n))
        for i, block in enumerate(self.blocks):
            if i == len(self.blocks) - 1 and n_out < n:  # the last block: only the positions read
                x = block(x, mask, n_out) * keep[:, -n_out:]
            else:
                x = block(x, mask) * keep
        return self.norm(x[:, -n_out:])

    def _set(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        hist = batch.hist_items[:, -self.max_len:]
        valid = hist != self.tower.n_items
        present = valid.any(dim=1)
        events = self.hist_drop.keep_mask(tuple(valid.shape), valid.device, torch.bool)
        if events is not None:  # drop whole events, but never all of a row's events
            kept = valid & events
            valid = torch.where(kept.any(dim=1, keepdim=True), kept, valid)
        mask = valid.to(self.tower.id_embedding.weight.dtype)
        norm = mask.sum(dim=1, keepdim=True).clamp(min=1.0).rsqrt()
        gate = self._gate(batch)
        w = mask * norm if gate is None else gate * mask * norm
        idx = torch.where(valid, hist, torch.full_like(hist, self.tower.n_items))
        pooled = self.in_drop(self.in_proj(self.tower.pooled(idx, w)))
        out = pooled + self.ff(pooled)
        if self.linear is not None:
            out = out + bag_sum(self.linear.weight, idx, mask * norm, padding_idx=self.tower.n_items)
        return out * present.unsqueeze(-1).to(out.dtype), present
