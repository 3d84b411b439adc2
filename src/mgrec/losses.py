"""Training losses as pure functions of scores.

Every neural model in mgrec can use each of them:

* :func:`softmax_loss`: full softmax cross-entropy over the whole catalogue,
  ``-log softmax(s)[target]``. The loss that makes SASRec and two-tower models strong
  (Klenitskiy & Vasilev 2023).
* :func:`dot_softmax_loss`: :func:`softmax_loss` of the scores ``p @ q.T``, computed in blocks
  of rows with its gradient, so the ``(B, N)`` logits are never kept for the backward pass.
* :func:`sampled_softmax_loss`: the same over the positive and ``M`` sampled negatives, with
  the logQ correction ``s - log q`` (Yi et al. 2019) so that the sampled gradient estimates
  the full one; for catalogues too large for a full softmax.
* :func:`bpr_loss`: ``-log sigmoid(s_pos - s_neg)`` (Rendle et al. 2009).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["bpr_loss", "softmax_loss", "dot_softmax_loss", "sampled_softmax_loss", "LOSSES"]

#: Logit entries per block of :func:`dot_softmax_loss` (2 MiB of float32: a core's L2 cache).
BLOCK_ENTRIES = 1 << 19


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bayesian personalised ranking: mean of ``-log sigmoid(pos - neg)``.

    Args:
        pos: ``(B,)`` scores of the positive items.
        neg: ``(B,)`` or ``(B, M)`` scores of negatives (each compared with its row's positive).
        mask: optional ``(B,)`` or ``(B, M)`` bool, ``True`` where a pair counts.

    Returns:
        A scalar tensor.

    Example:
        >>> float(bpr_loss(torch.tensor([0.0]), torch.tensor([0.0])))  # -log(1/2)
        0.6931471824645996
    """
    diff = pos.unsqueeze(-1) - neg if neg.dim() == pos.dim() + 1 else pos - neg
    losses = -F.logsigmoid(diff)
    return _masked_mean(losses, mask)


def softmax_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Full softmax cross-entropy: mean of ``logsumexp(logits) - logits[target]``.

    Args:
        logits: ``(B, N)`` scores of every item.
        target: ``(B,)`` ``int64`` index of the positive item.
        mask: optional ``(B,)`` bool, ``True`` where a row counts.

    Returns:
        A scalar tensor.
    """
    losses = F.cross_entropy(logits, target, reduction="none")
    return _masked_mean(losses, mask)


def dot_softmax_loss(p: torch.Tensor, q: torch.Tensor, target: torch.Tensor, *,
                     matmul_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`softmax_loss` of ``p @ q.T``, without keeping the logits for the backward pass.

    Under autograd, the forward pass walks blocks of rows small enough to stay in cache
    (:data:`BLOCK_ENTRIES` logits each). For each block it takes the logits, their softmax,
    the loss and the gradients ``(softmax - onehot) @ q`` and ``(softmax - onehot).T @ p``,
    and keeps only those two gradients, the sizes of ``p`` and ``q``. The backward pass
    scales them. The values equal :func:`softmax_loss` up to float rounding; it is about
    twice as fast on a CPU for a catalogue of a few thousand items (it skips three passes
    over the ``(B, N)`` logits and keeps the blocks in cache). Without autograd it is
    :func:`softmax_loss`.

    ``matmul_dtype=torch.bfloat16`` runs the three products (the logits and both gradients)
    in bfloat16 with float32 softmax, loss and gradient sums: mixed precision, as on a GPU.
    On a CPU with native bfloat16 (AVX512-BF16, AMX) the loss step is 30-40% faster for
    ml-100k's 1,682 items; the gradients differ from float32 by about 0.4% (relative norm).

    Args:
        p: ``(B, d)`` query vectors.
        q: ``(N, d)`` item vectors.
        target: ``(B,)`` ``int64`` index of each row's positive item.
        matmul_dtype: ``torch.float32`` or ``torch.bfloat16`` (see above).

    Returns:
        A scalar tensor: the mean over rows of ``logsumexp(p_b @ q.T) - p_b @ q_t``.
    """
    if not (torch.is_grad_enabled() and (p.requires_grad or q.requires_grad)):
        return softmax_loss(p @ q.T, target)
    if matmul_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"matmul_dtype must be torch.float32 or torch.bfloat16, got {matmul_dtype}")
    return _DotSoftmax.apply(p, q, target, matmul_dtype)


class _DotSoftmax(torch.autograd.Function):
    """Forward computes the loss and both gradients block by block; backward scales them."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor, q: torch.Tensor, target: torch.Tensor,
                matmul_dtype: torch.dtype) -> torch.Tensor:
        n_rows, n_items = p.shape[0], q.shape[0]
        low = matmul_dtype == torch.bfloat16 and p.dtype != torch.bfloat16
        step = max(1, BLOCK_ENTRIES // max(n_items, 1))
        grad_p, grad_q = torch.empty_like(p), torch.zeros_like(q)
        total = p.new_zeros((), dtype=torch.float64 if p.dtype == torch.float64 else torch.float32)
        rows = torch.arange(min(step, n_rows), device=p.device)
        p_mm, q_mm = (p.to(matmul_dtype), q.to(matmul_dtype)) if low else (p, q)
        for lo in range(0, n_rows, step):
            p_blk, t_blk = p_mm[lo:lo + step], target[lo:lo + step]
            at = (rows[: p_blk.shape[0]], t_blk)
            logits = (p_blk @ q_mm.T).float() if low else p_blk @ q_mm.T
            soft = torch.softmax(logits, dim=1)
            picked = soft[at]
            # -log softmax at the target; from logsumexp where the softmax underflows
            losses = -torch.log(picked)
            tiny = picked < 1e-30
            if bool(tiny.any()):
                losses[tiny] = torch.logsumexp(logits[tiny], dim=1) - logits[at][tiny]
            total += losses.sum()
            soft[at] -= 1.0  # now d loss_b / d logits
            if low:
                soft_mm = soft.to(matmul_dtype)
                grad_p[lo:lo + step] = soft_mm @ q_mm
                grad_q += soft_mm.T @ p_blk
            else:
                torch.mm(soft, q, out=grad_p[lo:lo + step])
                grad_q.addmm_(soft.T, p_blk)
        ctx.save_for_backward(grad_p, grad_q)
        return (total / max(n_rows, 1)).to(p.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        grad_p, grad_q = ctx.saved_tensors
        scale = grad / max(grad_p.shape[0], 1)
        return grad_p * scale, grad_q * scale, None, None


def sampled_softmax_loss(
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    pos_log_q: torch.Tensor | None = None,
    neg_log_q: torch.Tensor | None = None,
    accidental: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax with logQ correction.

    ``loss = -log( exp(pos - log q_pos) / (exp(pos - log q_pos) + sum_j exp(neg_j - log q_j)) )``

    Args:
        pos: ``(B,)`` positive scores.
        neg: ``(B, M)`` scores of sampled negatives, or ``(M,)`` negatives shared by the batch
            (broadcast to every row).
        pos_log_q: ``(B,)`` log sampling probability of each positive (``None``: no correction).
        neg_log_q: ``(M,)`` or ``(B, M)`` log sampling probability of each negative.
        accidental: ``(B, M)`` bool, ``True`` where a sampled negative is in fact the row's
            positive (or another known positive); those logits are dropped.
        mask: optional ``(B,)`` bool, ``True`` where a row counts.

    Returns:
        A scalar tensor.
    """
    if neg.dim() == 1:
        neg = neg.unsqueeze(0).expand(pos.shape[0], -1)
    if pos_log_q is not None:
        pos = pos - pos_log_q
    if neg_log_q is not None:
        neg = neg - neg_log_q
    if accidental is not None:  # in place on a fresh tensor when corrected (one pass less)
        neg = neg.masked_fill_(accidental, float("-inf")) if neg_log_q is not None \
            else neg.masked_fill(accidental, float("-inf"))
    # log(exp(pos) + sum_j exp(neg_j)) without concatenating the (B, 1 + M) logits
    losses = torch.logaddexp(pos, torch.logsumexp(neg, dim=1)) - pos
    return _masked_mean(losses, mask)


def _masked_mean(losses: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return losses.mean()
    mask = mask.to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp_min(1.0)


#: Loss names accepted by model configs.
LOSSES = {"bpr": bpr_loss, "softmax": softmax_loss, "sampled_softmax": sampled_softmax_loss}
