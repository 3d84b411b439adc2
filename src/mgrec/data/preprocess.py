"""Cleaning interactions before training: duplicates, rating threshold, k-core, self-links.

The steps run in a fixed order, each on the output of the one before:

1. ``dedupe``: one row per (user, item) pair, or all rows with ``"none"``;
2. ``min_rating``: keep rows with ``weight >= min_rating`` (explicit -> implicit feedback);
3. ``binarize``: set every weight to 1.0;
4. ``kcore_user`` / ``kcore_item``: drop users with fewer than ``kcore_user`` distinct items
   and items with fewer than ``kcore_item`` distinct users, repeated until nothing changes;
5. ``drop_self_links``: drop social links from a user to itself.

The result is compacted: users and items left without interactions leave the
vocabularies, the feature tables and the social graph. Everything is vectorised with numpy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mgrec.config import to_dict
from mgrec.data.dataset import Dataset, SocialGraph
from mgrec.errors import ConfigError, DataError

__all__ = ["PreprocessConfig", "preprocess", "kcore_mask"]

log = logging.getLogger(__name__)


@dataclass
class PreprocessConfig:
    """What :func:`preprocess` does.

    Args:
        dedupe: per (user, item) pair keep the ``"last"`` row (latest timestamp, ties and
            data without time broken by source order), the ``"first"``, one row whose weight is
            the ``"sum"`` of the pair's weights (keeping the latest row's timestamp), or every
            row (``"none"``).
        min_rating: keep rows with ``weight >= min_rating``; ``None`` keeps all.
        binarize: set every remaining weight to 1.0.
        kcore_user: minimum number of distinct items per user (0 = no filter).
        kcore_item: minimum number of distinct users per item (0 = no filter).
        drop_self_links: drop social links ``u -> u``.
    """

    dedupe: Literal["last", "first", "sum", "none"] = "last"
    min_rating: float | None = None
    binarize: bool = False
    kcore_user: int = 0
    kcore_item: int = 0
    drop_self_links: bool = True

    def __post_init__(self) -> None:
        if self.dedupe not in ("last", "first", "sum", "none"):
            raise ConfigError(f"preprocess.dedupe: {self.dedupe!r} is not one of "
                              "'last', 'first', 'sum', 'none'")
        if self.min_rating is not None and not math.isfinite(self.min_rating):
            raise ConfigError(f"preprocess.min_rating: must be a finite number, "
                              f"got {self.min_rating!r}")
        for name in ("kcore_user", "kcore_item"):
            if getattr(self, name) < 0:
                raise ConfigError(f"preprocess.{name}: must be >= 0, got {getattr(self, name)}")


def preprocess(dataset: Dataset, cfg: PreprocessConfig) -> Dataset:
    """Apply ``cfg`` to ``dataset`` and return a new, compacted dataset.

    ``meta["preprocess"]`` records the config and the counts removed at each step. Numpy
    arrays in ``meta`` with one entry per interaction row (such as a published split's
    ``test_mask``) are filtered along with the rows; after ``dedupe="sum"`` a merged pair
    keeps the entry of its latest row.

    Args:
        dataset: the dataset to clean (not modified).
        cfg: the steps to apply.

    Returns:
        The cleaned dataset with renumbered codes.

    Raises:
        DataError: when no interaction is left.
    """
    inter = dataset.interactions
    n_in = len(inter)
    users = inter["user"].to_numpy(dtype=np.int64)
    items = inter["item"].to_numpy(dtype=np.int64)
    weight = inter["weight"].to_numpy(dtype=np.float32)
    stamps = inter["timestamp"].to_numpy(dtype=np.int64) if dataset.has_time else None
    counts: dict[str, Any] = {"rows_in": n_in, "users_in": dataset.n_users,
                              "items_in": dataset.n_items}

    rows, weight = _dedupe(users, items, weight, stamps, dataset.n_items, cfg.dedupe)
    counts["duplicates_removed"] = n_in - len(rows)
    if cfg.min_rating is not None:
        keep = weight >= np.float32(cfg.min_rating)
        counts["below_min_rating"] = int((~keep).sum())
        rows, weight = rows[keep], weight[keep]
    if cfg.binarize:
        weight = np.ones_like(weight)
    n_before = len(rows)
    keep, iterations = kcore_mask(users[rows], items[rows], cfg.kcore_user, cfg.kcore_item)
    rows, weight = rows[keep], weight[keep]
    counts["kcore_removed"] = n_before - len(rows)
    counts["kcore_iterations"] = iterations
    if len(rows) == 0:
        raise DataError(
            f"dataset {dataset.name} is empty after filtering (min_rating={cfg.min_rating}, "
            f"kcore_user={cfg.kcore_user}, kcore_item={cfg.kcore_item})"
        )

    frame = inter.iloc[rows].reset_index(drop=True)
    frame["weight"] = weight.astype(np.float32)
    social = dataset.social
    counts["self_links_removed"] = 0
    if social is not None and cfg.drop_self_links:
        ok = social.src != social.dst
        counts["self_links_removed"] = int((~ok).sum())
        social = SocialGraph(social.src[ok], social.dst[ok], social.weight[ok], social.directed)
    meta = {k: _take_rows(v, rows, n_in) for k, v in dataset.meta.items()}
    if cfg.binarize or cfg.min_rating is not None:
        meta["weight_kind"] = "implicit"
    base = dataclasses.replace(dataset, social=social, meta=meta)
    out = base.with_interactions(frame, compact=True)
    counts.update(rows_out=len(out.interactions), users_out=out.n_users, items_out=out.n_items)
    if social is not None and out.social is not None:
        counts["social_links_out"] = len(out.social)
    out.meta["preprocess"] = {"config": to_dict(cfg), "counts": counts}
    log.info(
        "preprocess %s: %d -> %d interactions (duplicates %d, below min_rating %d, k-core %d in %d "
        "passes), users %d -> %d, items %d -> %d, self-links %d",
        dataset.name, n_in, counts["rows_out"], counts["duplicates_removed"],
        counts.get("below_min_rating", 0), counts["kcore_removed"], iterations,
        dataset.n_users, out.n_users, dataset.n_items, out.n_items, counts["self_links_removed"],
    )
    return out


def kcore_mask(
    users: np.ndarray, items: np.ndarray, k_user: int, k_item: int
) -> tuple[np.ndarray, int]:
    """Rows of the (k_user, k_item)-core of a bipartite interaction list.

    Degrees count distinct partners, so repeated rows of one pair count once. Users and
    items below their threshold are removed together in each pass until a pass removes
    nothing; the result is the unique largest sub-graph meeting both thresholds.

    Args:
        users: ``int64`` user codes, one per row.
        items: ``int64`` item codes, one per row.
        k_user: minimum distinct items per user (0 or 1 = no filter).
        k_item: minimum distinct users per item (0 or 1 = no filter).

    Returns:
        A boolean keep-mask over the rows and the number of passes that removed something.
    """
    alive = np.ones(len(users), dtype=bool)
    if (k_user <= 1 and k_item <= 1) or len(users) == 0:
        return alive, 0
    n_items = int(items.max()) + 1
    pair = users * n_items + items
    first = np.zeros(len(pair), dtype=bool)
    first[np.unique(pair, return_index=True)[1]] = True
    n_u, iterations = int(users.max()) + 1, 0
    while True:
        live = alive & first
        bad_u = np.bincount(users[live], minlength=n_u) < k_user
        bad_i = np.bincount(items[live], minlength=n_items) < k_item
        drop = alive & (bad_u[users] | bad_i[items])
        if not drop.any():
            return alive, iterations
        alive &= ~drop
        iterations += 1


def _dedupe(
    users: np.ndarray,
    items: np.ndarray,
    weight: np.ndarray,
    stamps: np.ndarray | None,
    n_items: int,
    how: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows to keep (ascending source positions) and their weights."""
    n = len(users)
    pos = np.arange(n, dtype=np.int64)
    if how == "none" or n == 0:
        return pos, weight.copy()
    pair = users * np.int64(n_items) + items
    keys = (pos, stamps, pair) if stamps is not None else (pos, pair)
    order = np.lexsort(keys)  # by pair, then time, then source position
    sorted_pair = pair[order]
    starts = np.flatnonzero(np.r_[True, sorted_pair[1:] != sorted_pair[:-1]])
    ends = np.r_[starts[1:], n] - 1
    chosen = order[starts] if how == "first" else order[ends]
    if how == "sum":
        sums = np.add.reduceat(weight[order].astype(np.float64), starts)
        w = sums.astype(np.float32)
    else:
        w = weight[chosen]
    back = np.argsort(chosen, kind="stable")
    return chosen[back], w[back]


def _take_rows(value: Any, rows: np.ndarray, n_rows: int) -> Any:
    """Filter a per-interaction numpy array in ``meta``; leave anything else alone."""
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n_rows:
        return value[rows]
    return value

