"""Training losses as pure functions of scores.

Every neural model in mgrec can use each of them:

* :func:`softmax_loss`: full softmax cross-entropy over the whole catalogue,
  ``-log softmax(s)[target]``. The loss that makes SASRec and two-tower models strong
  (Klenitskiy & Vasilev 2023).
* :func:`sampled_softmax_loss`: the same over the positive and ``M`` sampled negatives, with
  the logQ correction ``s - log q`` (Yi et al. 2019) so that the sampled gradient estimates
  the full one; for catalogues too large for a full softmax.
* :func:`bpr_loss`: ``-log sigmoid(s_pos - s_neg)`` (Rendle et al. 2009).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bpr_loss", "softmax_loss", "sampled_softmax_loss", "LOSSES"]


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
