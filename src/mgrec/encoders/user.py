"""Granularity ``user``: who the user is (id) and what their profile says (features)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mgrec.encoders import bernoulli_keep
from mgrec.encoders.base import Batch

__all__ = ["UserEncoder"]


class UserEncoder(nn.Module):
    """User id embedding + profile projection.

    The vector is ``id_u + sum_f E_f[cat_f] + bag(user_bag, user_bag_w) + W num``. Row
    ``n_users`` of the id table is zero (unknown user), so a cold user is represented by
    profile features alone; so is a user whose id never trained (``trained`` False: no training
    events, e.g. a user new in a temporal split's test period). While training, each row's id
    is dropped with probability ``id_dropout`` (from ``self.generator``), so the profile part
    learns to stand in for it.

    ``present`` is True for a known user (whose id was not dropped) or for any user with a
    profile feature: a non-zero categorical code, a positive bag weight, or a non-zero
    numeric value outside ``missing_columns``.

    Args:
        n_users: the number of known users.
        dim: the vector size ``D``.
        cat_cardinalities: per categorical feature, the number of known labels ``V`` (codes
            ``1..V``, 0 = missing; ``V + 1`` rows are made, so ``V + 1`` is also safe).
        n_numeric: the number of numeric columns in ``batch.user_num``.
        n_bag_tokens: the number of bag tokens (codes ``1..n``; 0 = padding).
        id_dropout: training-time probability of dropping a row's id part.
        sparse_ids: the id table gets sparse gradients (for very many users).
        missing_columns: indices of ``user_num`` columns that are missing indicators (as in
            :meth:`EncodedFeatures.numeric_matrix`, the odd columns); they are projected like
            the others but do not make a row present.
        trained: ``(n_users,)`` which users' ids are trained (default: all).
    """

    granularity = "user"

    def __init__(
        self,
        n_users: int,
        dim: int,
        *,
        cat_cardinalities: Sequence[int],
        n_numeric: int,
        n_bag_tokens: int,
        id_dropout: float = 0.0,
        missing_columns: Sequence[int] = (),
        sparse_ids: bool = False,
        trained: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if n_users < 1 or dim < 1:
            raise ValueError(f"n_users and dim must be positive, got {n_users}, {dim}")
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must lie in [0, 1), got {id_dropout}")
        self.n_users, self.out_dim = int(n_users), int(dim)
        self.n_cat, self.n_numeric = len(cat_cardinalities), int(n_numeric)
        self.n_bag_tokens = int(n_bag_tokens)
        self.id_dropout = float(id_dropout)
        self.generator: torch.Generator | None = None
        self.id_embedding = nn.Embedding(n_users + 1, dim, padding_idx=n_users, sparse=sparse_ids)
        self.cat_embeddings = nn.ModuleList(
            nn.Embedding(int(c) + 1, dim, padding_idx=0) for c in cat_cardinalities)
        self.bag_embedding = (nn.Embedding(self.n_bag_tokens + 1, dim, padding_idx=0)
                              if self.n_bag_tokens > 0 else None)
        self.num_proj = nn.Linear(self.n_numeric, dim, bias=False) if self.n_numeric > 0 else None
        value_cols = torch.ones(self.n_numeric, dtype=torch.bool)
        for c in missing_columns:
            if not 0 <= int(c) < self.n_numeric:
                raise ValueError(f"missing column {c} is not in 0..{self.n_numeric - 1}")
            value_cols[int(c)] = False
        self.register_buffer("value_columns", value_cols, persistent=False)
        known = torch.ones(n_users + 1, dtype=torch.bool)
        if trained is not None:
            if len(trained) != n_users:
                raise ValueError(f"trained must have one flag per user ({n_users}), got {len(trained)}")
            known[:n_users] = torch.as_tensor(np.asarray(trained, dtype=bool))
        known[n_users] = False
        self.register_buffer("trained_ids", known, persistent=False)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(vectors (B, D), present (B,) bool)``."""
        users = batch.users
        known = self.trained_ids[users]
        if self.training and self.id_dropout > 0.0:
            known = known & bernoulli_keep(users.shape, 1.0 - self.id_dropout, self.generator,
                                           users.device)
        ids = torch.where(known, users, torch.full_like(users, self.n_users))
        vec = self.id_embedding(ids)
        has_features = torch.zeros_like(known)
        for f, emb in enumerate(self.cat_embeddings):
            codes = batch.user_cat[:, f]
            vec = vec + emb(codes)
            has_features = has_features | (codes > 0)
        if self.bag_embedding is not None and batch.user_bag.shape[1] > 0:
            vec = vec + F.embedding_bag(batch.user_bag, self.bag_embedding.weight, mode="sum",
                                        per_sample_weights=batch.user_bag_w, padding_idx=0)
            has_features = has_features | ((batch.user_bag_w > 0) & (batch.user_bag > 0)).any(1)
        if self.num_proj is not None:
            vec = vec + self.num_proj(batch.user_num)
            values = batch.user_num[:, self.value_columns]
            has_features = has_features | (values != 0).any(dim=1)
        present = known | has_features
        return vec * present.unsqueeze(-1).to(vec.dtype), present
