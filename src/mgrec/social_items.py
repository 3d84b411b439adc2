"""The social granularity's item part: ``s(u, v) = scale * (times v is among the friends' recent items)``.

The social encoder turns what friends did into one vector, a direction of taste; it cannot
say "exactly these items". In social data the friend's item is itself the signal: in the
synthetic world (seed 0) 39% of events are of an item a friend consumed in the 30 days
before, against 9.5% for as many random users, and the fused model without this part
ranked the `loo` test item at NDCG@10 0.108 whether or not it read friends at all.

The part counts each item among the friends' recent items that the context already gives
the social encoder (``Batch.friend_items``: the ``friend_len`` latest items of up to
``max_friends`` friends, strictly before the request time), and adds ``scale`` times the
count to the score. ``scale`` is chosen on the validation split after the network is
trained, in units of the network's score spread (:data:`RELATIVE_SCALES`); ``0`` switches
the part off. It is exact and additive, so explanations add it to the ``social``
granularity's share.

It is a sparse per-user set of items rather than a low-rank vector, so a model with the part
scores the catalogue exactly (:meth:`mgrec.mgr.MGR.score`) instead of through an item index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RELATIVE_SCALES", "SocialItemsPart", "friend_item_counts"]

#: Candidate weights of one friend's item, in units of the network's score spread.
RELATIVE_SCALES = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0)


def friend_item_counts(friend_items: np.ndarray, n_known: int, n_items: int) -> np.ndarray:
    """``(B, n_items)`` how often each item appears among the friends' recent items.

    Args:
        friend_items: ``(B, F, Lf)`` item codes; ``n_known`` (and anything above) pads.
        n_known: the padding code (the items the context knows).
        n_items: columns of the result (the catalogue, added items included).
    """
    b = len(friend_items)
    flat = np.asarray(friend_items, dtype=np.int64).reshape(b, -1)
    rows = np.repeat(np.arange(b), flat.shape[1])
    cols = flat.ravel()
    ok = (cols >= 0) & (cols < min(n_known, n_items))
    out = np.zeros((b, n_items), np.float32)
    np.add.at(out, (rows[ok], cols[ok]), 1.0)
    return out


@dataclass
class SocialItemsPart:
    """The fitted part.

    Attributes:
        scale: the weight of one occurrence of an item among the friends' recent items.
    """

    scale: float

    def scores(self, friend_items: np.ndarray, n_known: int, n_items: int) -> np.ndarray:
        """``(B, n_items)`` ``scale`` times :func:`friend_item_counts`."""
        return friend_item_counts(friend_items, n_known, n_items) * np.float32(self.scale)
