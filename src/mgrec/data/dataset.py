"""The one data model: interactions, user and item features, social links, time.

A :class:`Dataset` is read-only once built. Raw ids live in the two vocabularies; every
array and frame inside uses the contiguous codes.

::

    Dataset
    ├── users: Vocabulary            raw user id  <-> code 0..n_users-1
    ├── items: Vocabulary            raw item id  <-> code 0..n_items-1
    ├── interactions: DataFrame      user, item, weight[, timestamp]   (codes; int64 unix seconds)
    ├── user_features: FeatureTable  one row per user code
    ├── item_features: FeatureTable  one row per item code
    └── social: SocialGraph          src -> dst user codes, weight
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mgrec.data.vocab import Vocabulary

if TYPE_CHECKING:
    from mgrec.data.shards import UserShard

__all__ = [
    "FEATURE_KINDS",
    "user_activity",
    "FeatureTable",
    "SocialGraph",
    "Dataset",
    "to_csr",
    "INTERACTION_COLUMNS",
]

#: What a feature column holds.
#: ``categorical``: one label per row (``str``, missing as ``None``);
#: ``multi``: a bag of labels (``tuple[str, ...]``; a repeated label weighs more; empty = missing);
#: ``numeric``: a float (missing as ``NaN``);
#: ``text``: short free text (``str``, missing as ``None``), tokenised by the encoder.
FEATURE_KINDS = ("categorical", "multi", "numeric", "text")

#: Columns of :attr:`Dataset.interactions`; ``timestamp`` is present only when the data has time.
INTERACTION_COLUMNS = ("user", "item", "weight", "timestamp")


@dataclass(frozen=True, eq=False)
class FeatureTable:
    """Side features of users or items, one row per entity code.

    Args:
        frame: a frame with a ``RangeIndex`` ``0..n-1`` aligned with the vocabulary, one column
            per feature.
        kinds: the kind of each column, one of :data:`FEATURE_KINDS`.
    """

    frame: pd.DataFrame
    kinds: Mapping[str, str]

    def __post_init__(self) -> None:
        cols = list(self.frame.columns)
        if set(cols) != set(self.kinds):
            raise ValueError(f"feature kinds {sorted(self.kinds)} do not match columns {sorted(cols)}")
        for name, kind in self.kinds.items():
            if kind not in FEATURE_KINDS:
                raise ValueError(f"feature {name!r}: unknown kind {kind!r}; use one of {FEATURE_KINDS}")
        if not isinstance(self.frame.index, pd.RangeIndex) or self.frame.index.start != 0:
            raise ValueError("feature frame must have a RangeIndex starting at 0")

    @property
    def names(self) -> list[str]:
        return list(self.frame.columns)

    def __len__(self) -> int:
        return len(self.frame)

    def take(self, codes: np.ndarray) -> FeatureTable:
        """Rows ``codes`` as a new table (index reset)."""
        return FeatureTable(self.frame.iloc[np.asarray(codes)].reset_index(drop=True), dict(self.kinds))

    def __repr__(self) -> str:
        desc = ", ".join(f"{n}:{k}" for n, k in self.kinds.items())
        return f"FeatureTable({len(self)} rows; {desc})"


@dataclass(frozen=True, eq=False)
class SocialGraph:
    """User-user links (friendship or trust) as code arrays.

    Args:
        src: ``int64`` user codes, shape ``(E,)``.
        dst: ``int64`` user codes, shape ``(E,)``.
        weight: ``float32`` link weights, shape ``(E,)``; ones when the data has none.
        directed: whether a link ``a -> b`` says nothing about ``b -> a`` (trust), or the
            source lists links that are mutual by nature (friendship).
    """

    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    directed: bool = True

    def __post_init__(self) -> None:
        if not (len(self.src) == len(self.dst) == len(self.weight)):
            raise ValueError("social src, dst and weight must have the same length")

    def __len__(self) -> int:
        return len(self.src)

    def top_friends(self, n_users: int, activity: np.ndarray, k: int) -> np.ndarray:
        """``(n_users, k)`` each user's ``k`` strongest friends, links read in both directions,
        padded with ``n_users``: heavier links first, then the more active friend (higher
        ``activity``, see :func:`user_activity`), then the lower code. Self-links are dropped."""
        out = np.full((n_users, k), n_users, np.int64)
        src, dst = np.concatenate([self.src, self.dst]), np.concatenate([self.dst, self.src])
        w = np.concatenate([self.weight, self.weight]).astype(np.float64)
        keep = src != dst
        src, dst, w = src[keep], dst[keep], w[keep]
        order = np.lexsort((dst, -activity[dst], -w, src))
        src, dst = src[order], dst[order]
        first = np.r_[True, (np.diff(src) != 0) | (np.diff(dst) != 0)]  # drop duplicate pairs
        src, dst = src[first], dst[first]
        per = np.bincount(src, minlength=n_users)
        rank = np.arange(len(src)) - np.repeat(np.cumsum(per) - per, per)
        ok = rank < k
        out[src[ok], rank[ok]] = dst[ok]
        return out

    def undirected_pairs(self) -> np.ndarray:
        """Distinct unordered pairs ``(a, b)`` with ``a < b``; self-links dropped. Shape ``(P, 2)``."""
        a = np.minimum(self.src, self.dst)
        b = np.maximum(self.src, self.dst)
        keep = a != b
        pairs = np.stack([a[keep], b[keep]], axis=1)
        if len(pairs) == 0:
            return pairs.reshape(0, 2).astype(np.int64)
        return np.unique(pairs, axis=0)

    def adjacency(self, n_users: int, *, symmetric: bool = True) -> sp.csr_matrix:
        """Binary ``(n_users, n_users)`` CSR adjacency; symmetrised unless ``symmetric=False``."""
        src, dst = self.src, self.dst
        if symmetric:
            src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
        keep = src != dst
        m = sp.csr_matrix(
            (np.ones(int(keep.sum()), dtype=np.float32), (src[keep], dst[keep])),
            shape=(n_users, n_users),
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def take_users(self, old_to_new: np.ndarray) -> SocialGraph:
        """Remap user codes with ``old_to_new`` (-1 drops the user and its links)."""
        s, d = old_to_new[self.src], old_to_new[self.dst]
        keep = (s >= 0) & (d >= 0)
        return SocialGraph(s[keep], d[keep], self.weight[keep], self.directed)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Everything mgrec knows about one dataset, for all five granularities.

    Args:
        name: the dataset's name (``ml-100k``, ``folder:/path``, ...).
        users: user vocabulary.
        items: item vocabulary.
        interactions: frame with columns ``user``, ``item`` (``int64`` codes), ``weight``
            (``float32``: rating, play count or 1) and, when the data has time, ``timestamp``
            (``int64`` unix seconds). One row per event, in source order.
        user_features: user side features or ``None``.
        item_features: item side features or ``None``.
        social: user-user links or ``None``.
        meta: free-form provenance (``weight_kind``, source files, notes).
        shard: the users this process trains on when the data is one data-parallel rank's
            view (:func:`mgrec.data.shards.load_shard`); ``None`` for the whole data.
    """

    name: str
    users: Vocabulary
    items: Vocabulary
    interactions: pd.DataFrame
    user_features: FeatureTable | None = None
    item_features: FeatureTable | None = None
    social: SocialGraph | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    shard: UserShard | None = None

    def __post_init__(self) -> None:
        cols = set(self.interactions.columns)
        for required in ("user", "item", "weight"):
            if required not in cols:
                raise ValueError(f"interactions lack the column {required!r}")
        extra = cols - set(INTERACTION_COLUMNS)
        if extra:
            raise ValueError(f"interactions have unknown columns {sorted(extra)}")
        if len(self.interactions):
            u, i = self.interactions["user"], self.interactions["item"]
            if u.min() < 0 or u.max() >= len(self.users):
                raise ValueError("interaction user codes fall outside the user vocabulary")
            if i.min() < 0 or i.max() >= len(self.items):
                raise ValueError("interaction item codes fall outside the item vocabulary")
        if self.user_features is not None and len(self.user_features) != len(self.users):
            raise ValueError("user_features must have one row per user")
        if self.item_features is not None and len(self.item_features) != len(self.items):
            raise ValueError("item_features must have one row per item")
        if self.social is not None and len(self.social):
            hi = max(self.social.src.max(), self.social.dst.max())
            lo = min(self.social.src.min(), self.social.dst.min())
            if lo < 0 or hi >= len(self.users):
                raise ValueError("social links name user codes outside the user vocabulary")

    # ----------------------------------------------------------------- sizes
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def has_time(self) -> bool:
        return "timestamp" in self.interactions.columns

    @property
    def granularities(self) -> list[str]:
        """Which of the five granularities this dataset carries."""
        out = []
        if self.user_features is not None and self.user_features.names:
            out.append("user")
        if self.item_features is not None and self.item_features.names:
            out.append("item")
        out.append("behavior")
        if self.social is not None and len(self.social):
            out.append("social")
        if self.has_time:
            out.append("time")
        return out

    def info(self) -> dict[str, Any]:
        """The summary that ``mgrec data info --json`` prints."""
        ts = self.interactions["timestamp"] if self.has_time else None
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": int(len(self.interactions)),
            "social_links": int(len(self.social.undirected_pairs())) if self.social is not None else 0,
            "user_features": self.user_features.names if self.user_features is not None else [],
            "item_features": self.item_features.names if self.item_features is not None else [],
            "first_timestamp": int(ts.min()) if ts is not None and len(ts) else None,
            "last_timestamp": int(ts.max()) if ts is not None and len(ts) else None,
            "granularities": self.granularities,
        }

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}: {self.n_users} users, {self.n_items} items, "
            f"{len(self.interactions)} interactions, "
            f"{len(self.social) if self.social is not None else 0} social links, "
            f"granularities={self.granularities})"
        )

    # ------------------------------------------------------------ transforms
    def with_interactions(self, frame: pd.DataFrame, *, compact: bool = True) -> Dataset:
        """A copy with new interactions (codes in this dataset's vocabularies).

        With ``compact=True`` users and items that no longer occur are dropped from the
        vocabularies, features and social graph, and codes are renumbered.
        """
        frame = frame.reset_index(drop=True)
        if not compact:
            return replace(self, interactions=frame)
        keep_u = np.unique(frame["user"].to_numpy())
        keep_i = np.unique(frame["item"].to_numpy())
        u_map = np.full(self.n_users, -1, dtype=np.int64)
        u_map[keep_u] = np.arange(len(keep_u))
        i_map = np.full(self.n_items, -1, dtype=np.int64)
        i_map[keep_i] = np.arange(len(keep_i))
        new = frame.copy()
        new["user"] = u_map[new["user"].to_numpy()]
        new["item"] = i_map[new["item"].to_numpy()]
        return Dataset(
            name=self.name,
            users=self.users.subset(keep_u),
            items=self.items.subset(keep_i),
            interactions=new,
            user_features=self.user_features.take(keep_u) if self.user_features is not None else None,
            item_features=self.item_features.take(keep_i) if self.item_features is not None else None,
            social=self.social.take_users(u_map) if self.social is not None else None,
            meta=dict(self.meta),
        )


def to_csr(
    frame: pd.DataFrame, n_users: int, n_items: int, *, binary: bool = True
) -> sp.csr_matrix:
    """User x item CSR matrix from an interaction frame (duplicates summed, or set to 1).

    Args:
        frame: columns ``user``, ``item`` and (unless ``binary``) ``weight``.
        n_users: number of rows.
        n_items: number of columns.
        binary: store 1 for every observed pair instead of the summed weight.

    Returns:
        ``float32`` CSR matrix of shape ``(n_users, n_items)`` with sorted indices.
    """
    u = frame["user"].to_numpy(dtype=np.int64)
    i = frame["item"].to_numpy(dtype=np.int64)
    w = np.ones(len(u), np.float32) if binary else frame["weight"].to_numpy(dtype=np.float32)
    m = sp.csr_matrix((w, (u, i)), shape=(n_users, n_items), dtype=np.float32)
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0
    m.sort_indices()
    return m


def user_activity(history: pd.DataFrame, n_users: int, *, has_time: bool) -> np.ndarray:
    """``(n_users,)`` int64: each user's latest event time in ``history`` (``-1`` without events),
    or, without time, the number of events. Friends are ranked by it (:meth:`SocialGraph.top_friends`)."""
    users = history["user"].to_numpy(np.int64)
    if not has_time:
        return np.bincount(users, minlength=n_users).astype(np.int64)
    out = np.full(n_users, -1, np.int64)
    np.maximum.at(out, users, history["timestamp"].to_numpy(np.int64))
    return out
