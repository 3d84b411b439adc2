"""Granularity encoders of the fused model and the small building blocks they share.

The encoder classes live in submodules and are imported lazily (``mgrec.encoders.ItemTower``
works, but importing :mod:`mgrec.encoders` stays cheap and cycle-free, so the submodules can
import the helpers defined here):

* :class:`~mgrec.encoders.item.ItemTower` (``q_v``) and
  :class:`~mgrec.encoders.item.ItemContentEncoder` (granularity ``item``),
* :class:`~mgrec.encoders.user.UserEncoder` (``user``),
* :class:`~mgrec.encoders.behavior.BehaviorEncoder` (``behavior``),
* :class:`~mgrec.encoders.social.SocialEncoder` (``social``),
* :class:`~mgrec.encoders.time.TimeEncoder` (``time``).

Randomness. Nothing here draws from torch's global generator when told not to:
:func:`init_module` (re)initialises every parameter from an explicit ``torch.Generator``, and
the training-time noise (dropout, id dropout) comes from the ``generator`` attribute of the
modules that draw it (:class:`GenDropout`, the item tower and the user encoder), which
:func:`set_generator` sets on a whole module tree. Where that attribute is ``None`` they fall
back to the global generator.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from mgrec.sparse import sparse_product

__all__ = [
    "N_TIME_BUCKETS",
    "BehaviorEncoder",
    "GenDropout",
    "ItemContentEncoder",
    "ItemTower",
    "SocialEncoder",
    "TimeEncoder",
    "UserEncoder",
    "bag_sum",
    "bernoulli_keep",
    "init_module",
    "masked_softmax",
    "set_generator",
    "time_buckets",
    "unique_rows",
    "weighted_sum",
]

_LAZY = {
    "ItemTower": "mgrec.encoders.item",
    "ItemContentEncoder": "mgrec.encoders.content",
    "UserEncoder": "mgrec.encoders.user",
    "BehaviorEncoder": "mgrec.encoders.behavior",
    "SocialEncoder": "mgrec.encoders.social",
    "TimeEncoder": "mgrec.encoders.time",
}

#: Log2 time-gap buckets: 0 = unknown, ``1 + floor(log2(1 + seconds))`` capped at the last.
N_TIME_BUCKETS = 34

#: The logit given to masked-out entries: ``exp`` of it underflows to exactly 0.
_MASKED = -1e30


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mgrec.encoders' has no attribute {name!r}")


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the entries where ``mask`` is True; masked entries get exactly 0.

    A slice with no True entry gives all zeros (not NaN), and gradients stay finite.

    Args:
        logits: any float tensor.
        mask: bool tensor broadcastable to ``logits``.
        dim: the dimension to normalise over.

    Returns:
        Weights of the shape of ``logits``.
    """
    mask = mask.expand_as(logits)
    w = torch.softmax(logits.masked_fill(~mask, _MASKED), dim=dim)
    return w * mask.to(w.dtype)


def time_buckets(seconds: torch.Tensor, n_buckets: int = N_TIME_BUCKETS) -> torch.Tensor:
    """Log2 buckets of time gaps: ``1 + floor(log2(1 + s))`` capped at ``n_buckets - 1``.

    Args:
        seconds: gaps in seconds, any shape; negative or non-finite gaps are unknown.
        n_buckets: the number of buckets including bucket 0 (unknown).

    Returns:
        ``int64`` bucket ids of the same shape; 0 marks an unknown gap.
    """
    s = seconds.to(torch.float64)
    known = torch.isfinite(s) & (s >= 0)
    b = torch.floor(torch.log2(1.0 + torch.where(known, s, torch.zeros_like(s)))) + 1
    b = b.clamp(1, n_buckets - 1).to(torch.int64)
    return torch.where(known, b, torch.zeros_like(b))


#: Levels of one dropout draw (16 bits).
DRAW_LEVELS = 1 << 16


class GenDropout(nn.Module):
    """Inverted dropout whose mask comes from ``self.generator`` (an explicit generator).

    The mask is drawn at 16 bits per element, four elements per 64-bit draw of the generator
    (a quarter of the draws of ``torch.rand``, which cost more than the rest of a transformer
    block's dropout). The keep probability is therefore ``1 - p`` rounded to a multiple of
    ``1 / 65536`` (:attr:`keep_prob`); kept elements are scaled by ``1 / keep_prob``.

    Args:
        p: the probability of zeroing an element.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {p}")
        self.p = float(p)
        #: draws below this (of 0 .. 65535) keep their element
        self.threshold = min(DRAW_LEVELS, max(1, round((1.0 - self.p) * DRAW_LEVELS)))
        self.keep_prob = self.threshold / DRAW_LEVELS
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * self._draw(tuple(x.shape), x.device, x.dtype).mul_(1.0 / self.keep_prob)

    def keep_mask(self, shape: tuple[int, ...], device: torch.device,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """The 0/1 keep mask (of ``dtype``, the same draws as :meth:`forward`) for an input of
        ``shape``, or ``None`` when inactive. For callers that fold the ``1 / keep_prob`` scale
        into a smaller tensor: ``forward(x) == (x * scale) * mask``. (A float mask, not a
        bool one: multiplying by a bool tensor converts it on every use.)"""
        if not self.training or self.p == 0.0:
            return None
        return self._draw(tuple(shape), device, dtype)

    def _draw(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        gen = self.generator
        where = gen.device if gen is not None else device
        n = math.prod(shape)
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=where).random_(-(1 << 63), None, generator=gen)
        draws = bits.view(torch.int16)[:n].view(shape)  # uniform over -32768 .. 32767
        keep = torch.empty(shape, dtype=dtype, device=where)
        torch.lt(draws, self.threshold - DRAW_LEVELS // 2, out=keep)
        return keep.to(device)

    @property
    def scale(self) -> float:
        """The factor applied to kept elements while active, else 1."""
        return 1.0 / self.keep_prob if self.training and self.p > 0.0 else 1.0

    def extra_repr(self) -> str:
        return f"p={self.p}"


def bernoulli_keep(
    shape: torch.Size | tuple[int, ...],
    keep_prob: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """A bool tensor of ``shape`` on ``device``, each entry True with probability ``keep_prob``.

    Args:
        shape: the output shape.
        keep_prob: the probability of True.
        generator: the source of randomness (``None``: torch's global generator).
        device: where the result lives (drawn on the generator's device, then moved).

    Returns:
        The mask.
    """
    gen_device = generator.device if generator is not None else device
    u = torch.rand(tuple(shape), generator=generator, device=gen_device)
    return (u < keep_prob).to(device)


def bag_sum(table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor | None, *,
             padding_idx: int | None) -> torch.Tensor:
    """``sum_l weights[..., l] * table[index[..., l]]`` in one fused gather (no ``(..., L, D)``
    intermediate, in the forward or the backward pass).

    Args:
        table: ``(N, D)`` float rows.
        index: int64 row indices ``(..., L)``; entries equal to ``padding_idx`` are skipped.
        weights: ``(..., L)`` factors, or ``None`` for ones.
        padding_idx: the padding index (``None``: every index counts).

    Returns:
        ``(..., D)`` sums.
    """
    flat = index.reshape(-1, index.shape[-1])
    psw = None if weights is None else weights.to(table.dtype).reshape(flat.shape)
    if _by_sparse_product(table, psw):
        out = sparse_product(table, _bag_matrix(flat, psw, table.shape[0], padding_idx))
    else:
        out = F.embedding_bag(flat, table, mode="sum", per_sample_weights=psw, padding_idx=padding_idx)
    return out.reshape(*index.shape[:-1], table.shape[1])


def _by_sparse_product(table: torch.Tensor, weights: torch.Tensor | None) -> bool:
    """Training on the CPU with constant weights: a sparse product (its backward is one more
    product, where ``embedding_bag``'s sorts every index of the batch; 3x faster for a batch
    of 1024 histories of 50)."""
    return table.requires_grad and torch.is_grad_enabled() and table.device.type == "cpu" \
        and table.dtype == torch.float32 and (weights is None or not weights.requires_grad) \
        and not torch.jit.is_tracing() and not torch.compiler.is_compiling()


def _bag_matrix(flat: torch.Tensor, weights: torch.Tensor | None, n_rows: int,
                padding_idx: int | None) -> sp.csr_matrix:
    """The ``(bags, n_rows)`` scipy CSR matrix of ``flat`` ``(bags, L)`` with ``weights``
    (padding entries weigh 0)."""
    idx = flat.detach().cpu().numpy()
    w = np.ones(idx.shape, np.float32) if weights is None else weights.detach().cpu().numpy().astype(np.float32)
    if padding_idx is not None:
        w = np.where(idx == padding_idx % n_rows, 0.0, w).astype(np.float32)
    indptr = np.arange(idx.shape[0] + 1, dtype=np.int64) * idx.shape[1]
    return sp.csr_matrix((w.ravel(), idx.ravel(), indptr), shape=(idx.shape[0], n_rows))


def _row_key_weights(n: int) -> torch.Tensor:
    """``n`` fixed float64 weights in [1, 2) (the same in every process), on the CPU whatever the
    default device (the generator is a CPU one)."""
    gen = torch.Generator().manual_seed(0x5EED + n)
    return 1.0 + torch.rand(n, generator=gen, dtype=torch.float64, device="cpu")


def unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a 2-d int64 tensor and where each row went: ``(uniq, inverse)``
    with ``uniq[inverse] == rows`` (``uniq``'s order is unspecified but deterministic).

    ``torch.unique(dim=0)`` sorts rows lexicographically (tens of ms for 20k short rows on one
    core); this keys each row by its dot product with fixed random float64 weights (one
    matrix-vector product), finds the distinct keys with a 1-d unique, and checks the result
    exactly, falling back to ``torch.unique(dim=0)`` when two different rows share a key.
    """
    if rows.dim() != 2:
        raise ValueError(f"rows must be 2-d, got shape {tuple(rows.shape)}")
    if rows.shape[0] == 0:
        return rows, torch.zeros(0, dtype=torch.int64, device=rows.device)
    weights = _row_key_weights(rows.shape[1]).to(rows.device)
    key = rows.to(torch.float64) @ weights
    keys, inverse = torch.unique(key, return_inverse=True)
    position = torch.arange(rows.shape[0], device=rows.device)
    first = torch.full((len(keys),), rows.shape[0], dtype=torch.int64, device=rows.device)
    first = first.scatter_reduce(0, inverse, position, reduce="amin")
    uniq = rows[first]
    if not bool((uniq[inverse] == rows).all()):  # two rows shared a key: the exact, slower way
        uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
    return uniq, inverse


def weighted_sum(vectors: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The sum of ``vectors`` ``(..., L, D)`` over ``L`` (weighted by ``weights`` ``(..., L)``
    when given), as ``(..., D)``."""
    if weights is None:
        return vectors.sum(dim=-2)
    lead, (length, dim) = vectors.shape[:-2], vectors.shape[-2:]
    w = weights.to(vectors.dtype).reshape(-1, 1, length)
    return torch.bmm(w, vectors.reshape(-1, length, dim)).reshape(*lead, dim)


def set_generator(module: nn.Module, generator: torch.Generator | None) -> None:
    """Point every submodule that draws training noise at ``generator``.

    Args:
        module: the root of the module tree.
        generator: the generator to draw from, or ``None`` for torch's global one.
    """
    for m in module.modules():
        if hasattr(m, "generator"):
            m.generator = generator


@torch.no_grad()
def init_module(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every parameter of ``module`` from ``generator`` (no global RNG).

    Embeddings get ``N(0, 1/dim)`` rows (their padding row, if any, zero), linear layers
    Xavier-uniform weights and zero biases, layer norms ones and zeros; any other parameter
    (e.g. fusion logits) starts at zero unless its module defines
    ``reset_with(generator)``, which is then called instead. Modules are visited in
    registration order, so the same generator state gives the same weights.

    Args:
        module: the root of the module tree.
        generator: a CPU ``torch.Generator`` (seeded by the caller).

    Returns:
        ``module``, for chaining.
    """
    for m in module.modules():
        if hasattr(m, "reset_with") and callable(m.reset_with):
            m.reset_with(generator)
        elif isinstance(m, nn.Embedding):
            _copy(m.weight, torch.randn(m.weight.shape, generator=generator) / math.sqrt(m.embedding_dim))
            if m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.Linear):
            fan_out, fan_in = m.weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            _copy(m.weight, (torch.rand(m.weight.shape, generator=generator) * 2 - 1) * bound)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
        else:
            for p in m.parameters(recurse=False):
                p.zero_()
    return module


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.copy_(src.to(device=dst.device, dtype=dst.dtype))
