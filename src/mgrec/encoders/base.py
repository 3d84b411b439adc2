"""What every granularity encoder sees and returns.

The fused model scores item ``v`` for user ``u`` in context ``c`` as ``q_v . p_{u,c}``.
Each granularity encoder turns a :class:`Batch` of (user, context) rows into one vector per
row; the fusion layer combines them into ``p_{u,c}``; the item tower gives ``q_v``.

A :class:`Batch` is padded to fixed shapes. Padding uses the index *one past the end*
(``n_users`` for users, ``n_items`` for items), so embedding tables have one extra row whose
vector is zero and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

import torch

__all__ = ["GRANULARITIES", "Batch", "Encoder"]

#: The five granularities, in the order used for explanations and ablations.
GRANULARITIES = ("user", "item", "behavior", "social", "time")


@dataclass(frozen=True)
class Batch:
    """``B`` (user, context) rows, all tensors on one device.

    Attributes:
        users: ``(B,)`` int64 user codes; ``n_users`` for a user unknown to the model.
        user_cat: ``(B, Fc)`` int64 codes of the user's categorical features (0 = missing).
        user_num: ``(B, Fn)`` float32 standardised numeric user features (missing = 0).
        user_bag: ``(B, Tb)`` int64 token codes of the user's multi-valued/text features,
            padded with 0 (token 0 = padding), and ``user_bag_w`` ``(B, Tb)`` float32 weights.
        hist_items: ``(B, L)`` int64 most recent history items, oldest first, *left*-padded with
            ``n_items`` (so ``hist_items[:, -1]`` is the latest event).
        hist_times: ``(B, L)`` float32 unix seconds of those events (0 where padded).
        hist_weights: ``(B, L)`` float32 event strengths (0 where padded).
        friends: ``(B, F)`` int64 friend user codes, padded with ``n_users``.
        friend_items: ``(B, F, Lf)`` int64 each friend's most recent items, padded ``n_items``.
        time: ``(B,)`` float32 request time in unix seconds (NaN when unknown).
    """

    users: torch.Tensor
    user_cat: torch.Tensor
    user_num: torch.Tensor
    user_bag: torch.Tensor
    user_bag_w: torch.Tensor
    hist_items: torch.Tensor
    hist_times: torch.Tensor
    hist_weights: torch.Tensor
    friends: torch.Tensor
    friend_items: torch.Tensor
    time: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def rows(self, index: torch.Tensor) -> Batch:
        """The rows ``index`` of every tensor."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)})


@runtime_checkable
class Encoder(Protocol):
    """One granularity's view of the user in context.

    Attributes:
        granularity: one of :data:`GRANULARITIES`.
        out_dim: the size ``D`` of the vectors it returns.
    """

    granularity: str
    out_dim: int

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(vectors (B, D), present (B,) bool)``; rows whose data is missing
        (no history, no friends, no features) have ``present`` False and a zero vector."""
        ...
