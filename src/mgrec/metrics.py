"""Top-k ranking metrics with binary relevance, defined as in RecBole.

Every metric works on a batch *hit matrix*: ``hits[b, j]`` is ``True`` when the item ranked
``j + 1`` for user ``b`` is relevant, and ``n_relevant[b]`` is the number of relevant items
of that user (all of them, including any the ranking could never reach). Each function
returns one value per user; means over users are taken by the caller
(:mod:`mgrec.evaluation`).

Notation for one user: ``h_j`` is 1 when rank ``j`` (1-based) is a hit, ``R`` the number of
relevant items, ``H_k = sum_{j<=k} h_j`` the hits in the top ``k``.

=============  ==============================================================================
precision@k    ``H_k / k``
recall@k       ``H_k / R``
f1@k           ``2 P R / (P + R)`` with ``P, R`` the precision and recall at ``k`` (0 if both 0)
hit@k          ``1`` if ``H_k > 0`` else ``0``
mrr@k          ``1 / j*`` with ``j*`` the rank of the first hit within ``k`` (0 if none)
ndcg@k         ``DCG / IDCG``; ``DCG = sum_{j<=k} h_j / log2(j + 1)``,
               ``IDCG = sum_{j<=min(R, k)} 1 / log2(j + 1)``
map@k          ``sum_{j<=k} (H_j / j) h_j / min(R, k)``
=============  ==============================================================================

A user with ``R = 0`` scores 0 on every metric (evaluation skips such users). A hit matrix
narrower than ``k`` (a catalogue with fewer than ``k`` rankable items) counts the missing
ranks as misses; precision still divides by ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from mgrec.errors import ConfigError

__all__ = [
    "METRICS",
    "MetricFn",
    "canonical_truth",
    "check_ks",
    "check_metrics",
    "compute",
    "f1",
    "hit",
    "hit_matrix",
    "list_metrics",
    "map_",
    "metric_key",
    "mrr",
    "ndcg",
    "precision",
    "recall",
]

#: ``fn(hits, n_relevant, k) -> (B,) float64``.
MetricFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


# --------------------------------------------------------------------------- helpers
def _prepare(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Check the inputs; return the ``(B, k)`` float hit matrix and ``(B,)`` float ``R``."""
    hits = np.asarray(hits)
    n_relevant = np.asarray(n_relevant)
    if hits.ndim != 2:
        raise ValueError(f"hits must be 2-D (users x ranks), got shape {hits.shape}")
    if n_relevant.shape != (hits.shape[0],):
        raise ValueError(
            f"n_relevant must have shape ({hits.shape[0]},), got {n_relevant.shape}"
        )
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    cut = hits[:, :k].astype(np.float64)
    if cut.shape[1] < k:
        cut = np.pad(cut, ((0, 0), (0, k - cut.shape[1])))
    return cut, n_relevant.astype(np.float64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0``."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


# --------------------------------------------------------------------------- metrics
def precision(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Precision@k: ``H_k / k``.

    Args:
        hits: ``(B, K)`` bool hit matrix.
        n_relevant: ``(B,)`` number of relevant items per user.
        k: cut-off.

    Returns:
        ``(B,)`` float64.
    """
    h, _ = _prepare(hits, n_relevant, k)
    return h.sum(axis=1) / k


def recall(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Recall@k: ``H_k / R`` (0 when ``R = 0``).

    Args:
        hits: ``(B, K)`` bool hit matrix.
        n_relevant: ``(B,)`` number of relevant items per user.
        k: cut-off.

    Returns:
        ``(B,)`` float64.
    """
    h, r = _prepare(hits, n_relevant, k)
    return _safe_div(h.sum(axis=1), r)


def f1(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """F1@k per user: ``2 P R / (P + R)`` with precision ``P`` and recall ``R`` at ``k``.

    Args:
        hits: ``(B, K)`` bool hit matrix.
        n_relevant: ``(B,)`` number of relevant items per user.
        k: cut-off.

    Returns:
        ``(B,)`` float64; 0 where ``P + R = 0``.
    """
    p = precision(hits, n_relevant, k)
    r = recall(hits, n_relevant, k)
    return _safe_div(2.0 * p * r, p + r)


def hit(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Hit@k (hit ratio): ``1`` if any of the top ``k`` is relevant, else ``0``.

    Args:
        hits: ``(B, K)`` bool hit matrix.
        n_relevant: ``(B,)`` number of relevant items per user.
        k: cut-off.

    Returns:
        ``(B,)`` float64 of 0 and 1.
    """
    h, _ = _prepare(hits, n_relevant, k)
    return (h.sum(axis=1) > 0).astype(np.float64)


def mrr(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """MRR@k: ``1 / j*`` with ``j*`` the 1-based rank of the first hit within ``k``.

    Args:
        hits: ``(B, K)`` bool hit matrix.
        n_relevant: ``(B,)`` number of relevant items per user.
        k: cut-off.

    Returns:
        ``(B,)`` float64; 0 for users without a hit in the top ``k``.
    """
    h, _ = _prepare(hits, n_relevant, k)
    any_hit = h.any(axis=1)
    first = np.argmax(h > 0, axis=1) + 1.0
    return np.where(any_hit, 1.0 / first, 0.0)


def _discounts(k: int) -> np.ndarray:
    """``1 / log2(j + 1)`` for ranks ``j = 1..k``."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k: ``DCG / IDCG`` with ``DCG = sum_{j<=k} h_j / log2(j + 1)``.

    ``IDCG`` places ``min(R, k)`` hits at the top: ``sum_{j<=min(R, k)} 1 / log2(j + 1)``.

    Args:
        hits: ``(B, K)`` bool hit matrix.
        n_relevant: ``(B,)`` number of relevant items per user.
        k: cut-off.

    Returns:
        ``(B,)`` float64; 0 when ``R = 0``.
    """
    h, r = _prepare(hits, n_relevant, k)
    disc = _discounts(k)
    dcg = h @ disc
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(r, k).astype(np.int64)]
    return _safe_div(dcg, idcg)


def map_(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """MAP@k (RecBole): ``sum_{j<=k} precision@j * h_j / min(R, k)``.

    Args:
        hits: ``(B, K)`` bool hit matrix.
        n_relevant: ``(B,)`` number of relevant items per user.
        k: cut-off.

    Returns:
        ``(B,)`` float64; 0 when ``R = 0``.
    """
    h, r = _prepare(hits, n_relevant, k)
    prec_at_j = np.cumsum(h, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    return _safe_div((prec_at_j * h).sum(axis=1), np.minimum(r, k))


#: Metric name -> per-user function ``fn(hits, n_relevant, k)``.
METRICS: dict[str, MetricFn] = {
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "hit": hit,
    "mrr": mrr,
    "ndcg": ndcg,
    "map": map_,
}


def metric_key(name: str, k: int) -> str:
    """The result key of metric ``name`` at cut-off ``k``, e.g. ``"ndcg@10"``."""
    return f"{name}@{k}"


def check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """Validate cut-offs: positive integers, deduplicated and sorted.

    Raises:
        ConfigError: for an empty list or a value that is not a positive integer.
    """
    out: set[int] = set()
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"metric cut-off k must be a positive integer, got {k!r}")
        out.add(int(k))
    if not out:
        raise ConfigError("at least one metric cut-off k is needed")
    return tuple(sorted(out))


def check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    """Validate metric names against :data:`METRICS`, keeping order, dropping repeats.

    Raises:
        ConfigError: for an unknown name or an empty list.
    """
    out: list[str] = []
    for name in metrics:
        if name not in METRICS:
            raise ConfigError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError("at least one metric is needed")
    return tuple(out)


def compute(
    hits: np.ndarray,
    n_relevant: np.ndarray,
    ks: Iterable[int],
    metrics: Iterable[str],
) -> dict[str, np.ndarray]:
    """Per-user values of several metrics at several cut-offs.

    Args:
        hits: ``(B, K)`` bool hit matrix.
        n_relevant: ``(B,)`` number of relevant items per user.
        ks: cut-offs.
        metrics: names from :data:`METRICS`.

    Returns:
        ``{"ndcg@10": (B,) float64, ...}`` for every metric and cut-off.

    Raises:
        ConfigError: for an unknown metric or a bad cut-off.
    """
    ks, metrics = check_ks(ks), check_metrics(metrics)
    return {metric_key(m, k): METRICS[m](hits, n_relevant, k) for m in metrics for k in ks}


# --------------------------------------------------------------------------- hit matrices
def canonical_truth(truth: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """CSR copy of ``truth`` with sorted indices, no duplicates and no stored zeros.

    A stored entry with a non-zero value means "relevant"; the values themselves are ignored.
    The input is returned unchanged when it is already canonical.
    """
    t = sp.csr_matrix(truth)
    if (t.data == 0).any():
        t = t.copy()
        t.eliminate_zeros()
    if not t.has_canonical_format:
        t = t.copy()
        t.sum_duplicates()
    return t


def hit_matrix(ranked: np.ndarray, truth: sp.spmatrix | sp.sparray) -> np.ndarray:
    """Which ranked items are relevant, for a batch of users.

    Vectorised: each ``(row, item)`` pair becomes the key ``row * n_items + item`` and is
    looked up with one binary search in the sorted keys of ``truth``.

    Args:
        ranked: ``(B, K)`` item codes, best first; ``-1`` pads short lists.
        truth: ``(B, n_items)`` sparse matrix whose row ``b`` holds the relevant items of the
            user ranked in ``ranked[b]``.

    Returns:
        ``(B, K)`` bool; padding is never a hit.

    Raises:
        ValueError: when the row counts differ or an item code is outside ``[-1, n_items)``.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D (users x ranks), got shape {ranked.shape}")
    t = canonical_truth(truth)
    n_rows, n_items = t.shape
    if ranked.shape[0] != n_rows:
        raise ValueError(f"ranked has {ranked.shape[0]} rows but truth has {n_rows}")
    if ranked.size and (ranked.min() < -1 or ranked.max() >= n_items):
        raise ValueError(f"ranked holds item codes outside [-1, {n_items})")
    if t.nnz == 0 or ranked.size == 0:
        return np.zeros(ranked.shape, dtype=bool)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(t.indptr))
    truth_keys = rows * n_items + t.indices.astype(np.int64)  # sorted: rows, then indices
    valid = ranked >= 0
    keys = np.arange(n_rows, dtype=np.int64)[:, None] * n_items + ranked
    pos = np.searchsorted(truth_keys, keys)
    pos = np.minimum(pos, len(truth_keys) - 1)
    return valid & (truth_keys[pos] == keys)


def list_metrics(
    ranked: Sequence[int] | np.ndarray,
    relevant: Collection[int],
    ks: Iterable[int],
    metrics: Iterable[str],
) -> dict[str, float]:
    """All metrics for one ranked list against one relevant set.

    Args:
        ranked: item ids, best first (``-1`` entries are padding).
        relevant: the relevant item ids.
        ks: cut-offs.
        metrics: names from :data:`METRICS`.

    Returns:
        ``{"ndcg@10": value, ...}``.

    Example:
        >>> list_metrics([3, 1, 2], {1}, [2], ["mrr", "hit"])
        {'mrr@2': 0.5, 'hit@2': 1.0}
    """
    rel = set(relevant)
    row = np.array([[item != -1 and item in rel for item in ranked]], dtype=bool).reshape(1, -1)
    values = compute(row, np.array([len(rel)]), ks, metrics)
    return {key: float(v[0]) for key, v in values.items()}
