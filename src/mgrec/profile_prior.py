"""The profile prior: how ``mgr`` ranks a user it knows by profile alone.

A user with no history and no friends leaves the network only profile features and the
request time. The network learns that case from training batches encoded as new users
(``cold_dropout``), but those are the very users it trained on, and a profile nearly
identifies its owner: on ml-100k (age, gender, occupation, zip) the network's new-user path
scored the training users' own events at NDCG@10 0.71 and held-out users at 0.47-0.52,
below popularity (0.51). Nothing in that training tells memorising from generalising.

The prior is a small softmax model fitted after the network, on the training events,
``score(v | u) = e_u . f_v + b_v``:

* ``e_u``: the sum of embeddings of the user's profile codes (each categorical label and
  numeric bucket, and each bag token by its weight), counting only codes that at least
  ``min_users`` of the fitted users carry, so a code that names a handful of users (a zip
  code) cannot memorise them;
* ``f_v``, ``b_v``: item factors and an item bias.

It trains with full-softmax cross-entropy and AdamW, and stops early on NDCG@10 of a seeded
share of the training users left out of its fit, whose training events are the truth: the
choice is made on users it has not seen, as a new user will be. :class:`~mgrec.mgr.MGR`
ranks with it the users it has no history and no friends for (:meth:`MGR.score`,
:meth:`MGR.recommend_context`); everyone else is ranked by the network.

Scores are one dot product: ``[e_u, 1] . [f_v, b_v]``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from mgrec.feature_arrays import FeatureArrays
from mgrec.metrics import compute, hit_matrix
from mgrec.recommender import topk

__all__ = ["PRIOR_K", "ProfilePrior", "design_matrix", "fit_profile_prior"]

log = logging.getLogger(__name__)

#: The cut-off of the validation NDCG the prior stops on.
PRIOR_K = 10
# the random stream of the validation draw and the initialisation: default_rng([stream, seed])
_STREAM = 7


@dataclasses.dataclass
class ProfilePrior:
    """A fitted profile prior (module docstring).

    Attributes:
        cat_offsets: ``(Fc,)`` row of each categorical column's code 0 in ``weights``.
        bag_offset: row of bag token 0 in ``weights``.
        keep: ``(n_codes,)`` whether each row of ``weights`` is used (frequent enough).
        weights: ``(n_codes, k)`` code embeddings.
        item_factors: ``(n_items, k)``.
        item_bias: ``(n_items,)``.
        info: what fitting measured (``valid_ndcg``, ``popularity_ndcg``, ``epochs``,
            ``best_epoch``, ``valid_users``, ``codes_kept``).
    """

    cat_offsets: np.ndarray
    bag_offset: int
    keep: np.ndarray
    weights: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_bias)

    def user_vectors(self, cat: np.ndarray, bag_idx: np.ndarray, bag_w: np.ndarray) -> np.ndarray:
        """``(B, k + 1)`` query vectors ``[e_u, 1]`` from encoded profiles (the arrays of
        :class:`~mgrec.feature_arrays.FeatureArrays`, one row per user)."""
        x = design_matrix(cat, bag_idx, bag_w, self.cat_offsets, self.bag_offset, self.keep)
        e = np.asarray(x @ self.weights, dtype=np.float32)
        return np.hstack([e, np.ones((len(e), 1), np.float32)])

    def item_vectors(self, n_items: int | None = None) -> np.ndarray:
        """``(n_items, k + 1)`` item vectors ``[f_v, b_v]``; items beyond the fitted catalogue
        (added later, no events) get no factor and the mean bias."""
        q = np.hstack([self.item_factors, self.item_bias[:, None]]).astype(np.float32)
        extra = (n_items or self.n_items) - self.n_items
        if extra > 0:
            pad = np.zeros((extra, q.shape[1]), np.float32)
            pad[:, -1] = self.item_bias.mean()
            q = np.vstack([q, pad])
        return q

    def scores(self, cat: np.ndarray, bag_idx: np.ndarray, bag_w: np.ndarray,
               n_items: int | None = None) -> np.ndarray:
        """``(B, n_items)`` ``float32`` scores."""
        return self.user_vectors(cat, bag_idx, bag_w) @ self.item_vectors(n_items).T

    # ---------------------------------------------------------------- persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(json-able meta, arrays)`` for the model file."""
        meta = {"bag_offset": int(self.bag_offset), "info": self.info}
        arrays = {"cat_offsets": self.cat_offsets.astype(np.int64), "keep": self.keep.astype(np.uint8),
                  "weights": self.weights.astype(np.float32), "item_factors": self.item_factors.astype(np.float32),
                  "item_bias": self.item_bias.astype(np.float32)}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> ProfilePrior:
        """Inverse of :meth:`to_state`.

        Raises:
            ValueError: when the arrays do not fit together.
        """
        prior = cls(np.asarray(arrays["cat_offsets"], np.int64), int(meta["bag_offset"]),
                    np.asarray(arrays["keep"]).astype(bool), np.asarray(arrays["weights"], np.float32),
                    np.asarray(arrays["item_factors"], np.float32), np.asarray(arrays["item_bias"], np.float32),
                    dict(meta.get("info") or {}))
        if not (len(prior.keep) == len(prior.weights) and len(prior.item_factors) == len(prior.item_bias)
                and prior.weights.shape[1] == prior.item_factors.shape[1]):
            raise ValueError("profile prior arrays have inconsistent shapes")
        return prior


def design_matrix(cat: np.ndarray, bag_idx: np.ndarray, bag_w: np.ndarray, cat_offsets: np.ndarray,
                  bag_offset: int, keep: np.ndarray) -> sp.csr_matrix:
    """``(B, n_codes)`` profile codes: 1 per present categorical code, the token weight per
    bag token; missing codes (0), padding tokens (0), codes beyond the table and codes not
    in ``keep`` are left out."""
    b = len(cat)
    n_codes = len(keep)
    rows = [np.repeat(np.arange(b), cat.shape[1]), np.repeat(np.arange(b), bag_idx.shape[1])]
    cols = [(cat + cat_offsets[None, :]).ravel(), (bag_idx + bag_offset).ravel()]
    vals = [np.where(cat > 0, 1.0, 0.0).ravel(), np.where(bag_idx > 0, bag_w, 0.0).ravel()]
    r, c, v = (np.concatenate(a) for a in (rows, cols, vals))
    ok = (v != 0) & (c < n_codes)
    ok[ok] = keep[c[ok]]
    return sp.csr_matrix((v[ok].astype(np.float32), (r[ok], c[ok])), shape=(b, n_codes))


def _ndcg(scores: np.ndarray, truth: sp.csr_matrix) -> float:
    ranked = topk(scores, PRIOR_K)[0]
    values = compute(hit_matrix(ranked, truth), np.diff(truth.indptr), [PRIOR_K], ["ndcg"])
    return float(next(iter(values.values())).mean())


def fit_profile_prior(
    arrays: FeatureArrays,
    seen: sp.csr_matrix,
    users: np.ndarray,
    *,
    dim: int,
    min_users: int,
    seed: int,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    batch_users: int = 1024,
    max_epochs: int = 500,
    eval_every: int = 5,
    patience: int = 10,
    valid_share: float = 0.1,
) -> ProfilePrior | None:
    """Fit the prior on the events in ``seen`` of ``users`` (module docstring).

    Args:
        arrays: encoded profiles of every user (rows indexed by user code).
        seen: ``(n_users, n_items)`` training events (any positive value counts as one).
        users: the users to fit and validate on (those with events).
        dim: ``k``, the embedding size.
        min_users: codes carried by fewer of the fitted users are not used.
        seed: seeds the validation draw, the initialisation and the batch order.
        lr, weight_decay: AdamW's.
        batch_users: users per step.
        max_epochs, eval_every, patience: early stopping on validation NDCG@10.
        valid_share: the share of ``users`` left out of the fit for validation.

    Returns:
        The prior at its best validation epoch, or ``None`` with fewer than 20 users or no
        profile code that ``min_users`` users share.
    """
    users = np.unique(np.asarray(users, np.int64))
    if len(users) < 20:
        return None
    rng = np.random.default_rng([_STREAM, seed])
    valid = np.sort(rng.choice(users, max(2, round(valid_share * len(users))), replace=False))
    fit_users = np.setdiff1d(users, valid)
    n_cat_rows = [int(c) for c in arrays.cardinalities]
    cat_offsets = np.r_[0, np.cumsum(n_cat_rows)[:-1]].astype(np.int64)
    bag_offset = int(sum(n_cat_rows))
    n_codes = bag_offset + int(arrays.n_bag_tokens)
    everything = np.ones(n_codes, bool)
    x_fit = design_matrix(arrays.cat[fit_users], arrays.bag_idx[fit_users], arrays.bag_w[fit_users],
                          cat_offsets, bag_offset, everything)
    carriers = np.bincount(x_fit.indices, minlength=n_codes)
    keep = carriers >= max(1, int(min_users))
    if not keep.any():
        return None
    x_all = design_matrix(arrays.cat, arrays.bag_idx, arrays.bag_w, cat_offsets, bag_offset, keep)
    truth = (seen > 0).astype(np.float32).tocsr()
    n_items = truth.shape[1]
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    weights = torch.nn.Parameter(0.01 * torch.randn(n_codes, dim, generator=gen))
    factors = torch.nn.Parameter(0.01 * torch.randn(n_items, dim, generator=gen))
    counts = np.asarray(truth[fit_users].sum(axis=0)).ravel()
    # from zero: started at log popularity, AdamW's equal-size first steps scrambled the order
    # of the popular items and validation never recovered (ml-100k: stuck at epoch 5)
    bias = torch.nn.Parameter(torch.zeros(n_items))
    opt = torch.optim.AdamW([weights, factors, bias], lr=lr, weight_decay=weight_decay)

    def logits(x: sp.csr_matrix) -> torch.Tensor:
        coo = x.tocoo()
        index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        xt = torch.sparse_coo_tensor(index, torch.from_numpy(coo.data), x.shape, dtype=torch.float32,
                                     check_invariants=False)
        return torch.sparse.mm(xt, weights) @ factors.T + bias

    valid_truth = truth[valid]
    pop_ndcg = _ndcg(np.tile(counts.astype(np.float32), (len(valid), 1)), valid_truth)
    best, best_state, best_epoch, bad, epoch = -1.0, None, 0, 0, 0
    for epoch in range(1, max_epochs + 1):
        order = fit_users[torch.randperm(len(fit_users), generator=gen).numpy()]
        for s in range(0, len(order), batch_users):
            rows = order[s:s + batch_users]
            target = torch.from_numpy(truth[rows].toarray())
            loss = -(target * torch.log_softmax(logits(x_all[rows]), dim=1)).sum() / target.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % eval_every and epoch != max_epochs:
            continue
        with torch.no_grad():
            score = _ndcg(logits(x_all[valid]).numpy(), valid_truth)
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            best_state = [p.detach().clone() for p in (weights, factors, bias)]
        else:
            bad += 1
            if bad >= patience:
                break
    assert best_state is not None
    w, f, b = (t.numpy() for t in best_state)
    info = {"valid_ndcg": round(best, 6), "popularity_ndcg": round(pop_ndcg, 6), "epochs": epoch,
            "best_epoch": best_epoch, "valid_users": len(valid), "codes_kept": int(keep.sum())}
    log.info("mgr: profile prior, valid ndcg@10 %.4f (popularity %.4f), best epoch %d of %d, %d codes",
             best, pop_ndcg, best_epoch, epoch, int(keep.sum()))
    return ProfilePrior(cat_offsets, bag_offset, keep, w.astype(np.float32), f.astype(np.float32),
                        b.astype(np.float32), info)
