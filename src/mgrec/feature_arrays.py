"""Model-ready arrays of entity features for the fused model.

:func:`feature_arrays` pads encoded features (:mod:`mgrec.data.features`) into fixed-width
arrays: categorical codes and numeric bucket codes side by side, numeric values with missing
indicators, and every bag feature (``multi``, ``text``) in one shared token space (feature
blocks offset, token 0 = padding), keeping each row's heaviest tokens.

:func:`build_item_arrays` makes the item side (:meth:`ItemTower.set_item_data` input): padded
item features and item time features computed from the history (log popularity; with time also
the share of events in the last 10% of the span and the log age since the first event),
standardised over the catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mgrec.data.features import EncodedFeatures

__all__ = ["MAX_TOKENS", "FeatureArrays", "ItemArrays", "build_item_arrays", "feature_arrays",
           "item_time_raw"]

#: Bag tokens kept per entity (the heaviest ones).
MAX_TOKENS = 64
_DAY = 86400.0
#: ``reduce(array, op)``: element-wise ``sum``, ``min`` or ``max`` of ``array`` over data-parallel ranks.
Reduce = Callable[[np.ndarray, str], np.ndarray]


@dataclass(frozen=True)
class FeatureArrays:
    """Encoded features of ``N`` entities as padded arrays.

    Attributes:
        cat: ``(N, Fc)`` int64 codes of each categorical feature, then of each bucketed numeric
            feature, in encoder order (0 = missing).
        num: ``(N, Fn)`` float32 standardised values and missing indicators.
        bag_idx: ``(N, Tb)`` int64 token ids over all bag features (0 = padding).
        bag_w: ``(N, Tb)`` float32 token weights (0 where padded).
        cardinalities: embedding rows of each categorical feature.
        n_bag_tokens: token vocabulary size including the padding token 0.
    """

    cat: np.ndarray
    num: np.ndarray
    bag_idx: np.ndarray
    bag_w: np.ndarray
    cardinalities: list[int]
    n_bag_tokens: int


def feature_arrays(enc: EncodedFeatures | None, n_rows: int, max_tokens: int = MAX_TOKENS) -> FeatureArrays:
    """Pad encoded features; bag features share one token space (feature blocks offset).

    Args:
        enc: the encoded features, or ``None`` for entities without features.
        n_rows: the number of entities (used when ``enc`` is ``None``).
        max_tokens: keep at most this many (heaviest) tokens per row.

    Returns:
        The padded arrays; ``Tb`` is at least 1 so the arrays are never empty.
    """
    if enc is None:
        return FeatureArrays(np.zeros((n_rows, 0), np.int64), np.zeros((n_rows, 0), np.float32),
                             np.zeros((n_rows, 1), np.int64), np.zeros((n_rows, 1), np.float32), [], 1)
    specs = enc.encoder.specs
    cat_names = enc.code_columns()  # categorical codes and numeric bucket codes
    cat = (np.stack([enc.codes(n) for n in cat_names], axis=1) if cat_names
           else np.zeros((enc.n_rows, 0), np.int64)).astype(np.int64)
    bags = [enc.bags[s.name] for s in specs if s.kind in ("multi", "text")]
    n_tokens = 1 + sum(b.shape[1] for b in bags)
    if bags:
        full = sp.hstack(bags, format="csr", dtype=np.float32)
    else:
        full = sp.csr_matrix((enc.n_rows, 0), dtype=np.float32)
    idx, w = _pad_rows(full, max_tokens)
    return FeatureArrays(cat, enc.numeric_matrix().astype(np.float32), idx, w,
                         [enc.cardinality(n) for n in cat_names], n_tokens)


def _pad_rows(m: sp.csr_matrix, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's heaviest ``max_tokens`` entries as (column + 1, weight), right-padded with 0."""
    coo = m.tocoo()
    order = np.lexsort((coo.col, -coo.data, coo.row))
    rows, cols, vals = coo.row[order], coo.col[order], coo.data[order]
    counts = np.bincount(rows, minlength=m.shape[0]) if len(rows) else np.zeros(m.shape[0], np.int64)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    width = int(max(1, min(max_tokens, counts.max() if len(counts) else 0)))
    keep = rank < width
    idx = np.zeros((m.shape[0], width), np.int64)
    w = np.zeros((m.shape[0], width), np.float32)
    idx[rows[keep], rank[keep]] = cols[keep].astype(np.int64) + 1
    w[rows[keep], rank[keep]] = vals[keep]
    return idx, w


@dataclass(frozen=True)
class ItemArrays:
    """The item tower's data: padded features and standardised item time features.

    Attributes:
        features: padded encoded item features.
        time_feats: ``(N, Ft)`` float32 standardised time features.
        time_mean: ``(Ft,)`` raw means, to standardise new items the same way.
        time_std: ``(Ft,)`` raw standard deviations.
    """

    features: FeatureArrays
    time_feats: np.ndarray
    time_mean: np.ndarray
    time_std: np.ndarray

    def new_item_time_feats(self, n: int) -> np.ndarray:
        """Time features of ``n`` items without any event (standardised zeros)."""
        z = (np.zeros_like(self.time_mean) - self.time_mean) / self.time_std
        return np.tile(z.astype(np.float32), (n, 1))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """``(cat, num, bag_idx, bag_w, time_feats)`` for :meth:`ItemTower.set_item_data`."""
        f = self.features
        return tuple(torch.from_numpy(np.ascontiguousarray(a))
                     for a in (f.cat, f.num, f.bag_idx, f.bag_w, self.time_feats))


def item_time_raw(history: pd.DataFrame, n_items: int, *, with_time: bool,
                  reduce: Reduce | None = None) -> np.ndarray:
    """Raw item time features: log popularity; with time, recent share and log age in days.

    ``reduce(array, op)`` (``op``: ``sum``, ``min``, ``max``) combines partial statistics when
    ``history`` is one data-parallel rank's share of the events (each event in exactly one
    share): the result is then what the whole history gives, on every rank.
    """
    def whole(values: np.ndarray, op: str) -> np.ndarray:
        return values if reduce is None else reduce(values, op)

    items = history["item"].to_numpy(np.int64)
    count = whole(np.bincount(items, minlength=n_items).astype(np.int64), "sum").astype(np.float64)
    cols = [np.log1p(count)]
    timed = with_time and "timestamp" in history.columns
    if timed and count.sum() > 0:
        ts = history["timestamp"].to_numpy(np.int64)
        big = np.iinfo(np.int64).max
        t0 = int(whole(np.array([ts.min() if len(ts) else big]), "min")[0])
        t1 = int(whole(np.array([ts.max() if len(ts) else -big]), "max")[0])
        recent = whole(np.bincount(items[ts >= t1 - 0.1 * (t1 - t0)], minlength=n_items).astype(np.int64), "sum")
        first = np.full(n_items, t1, np.int64)
        np.minimum.at(first, items, ts)
        first = whole(first, "min")
        cols += [recent / np.maximum(count, 1.0), np.log1p((t1 - first) / _DAY)]
    return np.stack(cols, axis=1)


def build_item_arrays(
    encoded: EncodedFeatures | None,
    history: pd.DataFrame,
    n_items: int,
    *,
    with_time: bool,
    max_tokens: int = MAX_TOKENS,
    reduce: Reduce | None = None,
) -> ItemArrays:
    """Item-side arrays for the tower.

    Args:
        encoded: encoded item features (``None`` without item features).
        history: the interactions the model may know (popularity, recency).
        n_items: catalogue size.
        with_time: add the time-based features (needs a ``timestamp`` column).
        max_tokens: bag tokens kept per item.
        reduce: combines a data-parallel rank's partial statistics (:func:`item_time_raw`).

    Returns:
        The arrays, time features standardised over the catalogue.
    """
    raw = item_time_raw(history, n_items, with_time=with_time, reduce=reduce)
    mean, std = raw.mean(axis=0), raw.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z = ((raw - mean) / std).astype(np.float32)
    return ItemArrays(feature_arrays(encoded, n_items, max_tokens), z, mean, std)
