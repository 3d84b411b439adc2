"""Full-ranking evaluation of a :class:`~mgrec.recommender.Recommender`.

:func:`evaluate` ranks *every* item for each evaluated user through the one
:meth:`Recommender.recommend` contract (training items filtered, ``exclude`` honoured) and
averages the per-user metrics of :mod:`mgrec.metrics` over users. Users are processed in
chunks sized from a memory budget, so a large catalogue never materialises the full
user x item score matrix.

:func:`evaluate_sampled` implements the sampled-negative protocol (each positive ranked
against a few sampled negatives). It overstates accuracy and is not comparable with
full-ranking numbers; it exists only behind that explicit function, warns when called and
prefixes its keys with ``sampled_``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from mgrec.errors import ConfigError, DataError
from mgrec.metrics import canonical_truth, check_ks, check_metrics, compute, hit_matrix

if TYPE_CHECKING:
    import pandas as pd

    from mgrec.data.dataset import Dataset
    from mgrec.data.split import Split
    from mgrec.recommender import Recommender

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_METRICS",
    "MEMORY_BUDGET_BYTES",
    "OBSERVE_VALID",
    "SampledMetricsWarning",
    "default_chunk_size",
    "evaluate",
    "evaluate_sampled",
    "evaluate_split",
]

logger = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
DEFAULT_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "ndcg", "map", "mrr", "hit")
#: Split protocols whose test ranking reads the validation events as history (the model,
#: trained on ``train``, observes them without retraining): under leave-one-out the validation
#: event is the one just before the test event, and SASRec's protocol (Kang & McAuley 2018;
#: Klenitskiy & Vasilev 2023) feeds the whole sequence before the test item. ``random`` holds
#: out events in no order, and ``temporal`` keeps the model at its training cut.
OBSERVE_VALID: frozenset[str] = frozenset({"loo"})

#: Memory allowed for the score matrices of one chunk of users.
MEMORY_BUDGET_BYTES = 256 * 2**20
#: float32 bytes held per (user, item) while ranking: the model's scores, the masked copy
#: made by ``recommend`` and the top-k workspace.
_BYTES_PER_SCORE = 12

SAMPLED_WARNING = (
    "sampled-negative metrics rank each positive against only a few sampled items; they "
    "overstate accuracy, can order models differently from full ranking, and are NOT "
    "comparable with full-ranking results (use evaluate() for those)"
)


class SampledMetricsWarning(UserWarning):
    """Issued by :func:`evaluate_sampled`: its numbers are not full-ranking metrics."""


def default_chunk_size(n_items: int, budget_bytes: int = MEMORY_BUDGET_BYTES) -> int:
    """Users per chunk so that ranking one chunk stays within ``budget_bytes``.

    Args:
        n_items: catalogue size.
        budget_bytes: memory allowed for one chunk's score matrices.

    Returns:
        At least 1.

    Example:
        >>> default_chunk_size(100_000)
        223
    """
    return max(1, int(budget_bytes) // (max(1, int(n_items)) * _BYTES_PER_SCORE))


# ------------------------------------------------------------------------------ full ranking
def evaluate(
    model: Recommender,
    truth: sp.csr_matrix,
    *,
    exclude: sp.csr_matrix | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    metrics: Iterable[str] = DEFAULT_METRICS,
    users: np.ndarray | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` against held-out ``truth``.

    Each evaluated user's top ``max(ks)`` comes from
    ``model.recommend(users, k=max(ks), filter_seen=True, exclude=exclude)``. A relevant item
    the ranking cannot reach (seen in training or excluded) still counts in that user's
    number of relevant items, as in RecBole.

    Args:
        model: a fitted recommender.
        truth: ``(n_users, n_items)`` sparse matrix of relevant items, rows by user code.
        exclude: ``(n_users, n_items)`` items to drop from each ranking besides the model's
            training items (e.g. the validation items when testing).
        ks: cut-offs.
        metrics: names from :data:`mgrec.metrics.METRICS`.
        users: user codes to evaluate; default all users with a truth item. Users without a
            truth item are skipped either way.
        chunk_size: users ranked at once; default from :func:`default_chunk_size`.
        progress: show a tqdm progress bar.

    Returns:
        ``{"ndcg@10": mean, ..., "coverage@10": share of the catalogue recommended in any
        top-10, ..., "n_users": number of evaluated users}``.

    Raises:
        ConfigError: for a bad metric, cut-off, chunk size or user code, or an unfitted model.
        DataError: when the matrices do not match the model or nothing can be evaluated.
    """
    ks, metrics = check_ks(ks), check_metrics(metrics)
    truth = canonical_truth(truth)
    n_items = _check_shapes(model, truth, exclude)
    users = _eval_users(truth, users)
    chunk = _chunk_size(chunk_size, n_items)
    kmax = max(ks)
    parts: dict[str, list[np.ndarray]] = {}
    covered = {k: np.zeros(n_items, dtype=bool) for k in ks}
    for u in _chunks(users, chunk, progress, "evaluate"):
        items, _ = model.recommend(u, k=kmax, filter_seen=True, exclude=exclude)
        items = _pad(np.asarray(items, dtype=np.int64).reshape(len(u), -1), kmax)
        rows = truth[u]
        values = compute(hit_matrix(items, rows), np.diff(rows.indptr), ks, metrics)
        for key, v in values.items():
            parts.setdefault(key, []).append(v)
        for k in ks:
            top = items[:, :k]
            covered[k][top[top >= 0]] = True
    result = {key: float(np.concatenate(v).mean()) for key, v in parts.items()}
    for k in ks:
        result[f"coverage@{k}"] = float(covered[k].sum() / n_items)
    result["n_users"] = int(len(users))
    logger.info("evaluated %d users on %d items", len(users), n_items)
    return result


def evaluate_split(
    model: Recommender,
    split: Split,
    dataset: Dataset,
    *,
    part: str = "test",
    **kw: object,
) -> dict[str, float]:
    """:func:`evaluate` on the validation or test part of a split.

    With ``part="test"`` the truth is ``split.test`` and the validation items are excluded
    from the rankings (the model's own training items are filtered by ``recommend``), so
    no known interaction is counted as a recommendation. Under the protocols of
    :data:`OBSERVE_VALID` (``loo``) the test ranking comes from :meth:`Recommender.observed`:
    a copy of the model that has observed the validation events as history (``model`` itself
    is unchanged). With ``part="valid"`` the truth is ``split.valid`` and nothing else is
    excluded.

    Args:
        model: a fitted recommender, trained on ``split.train`` of ``dataset``.
        split: has ``train``, ``valid`` and ``test`` frames with columns ``user``, ``item``
            in dataset codes.
        dataset: the dataset the codes refer to.
        part: ``"test"`` or ``"valid"``.
        **kw: passed to :func:`evaluate`; an ``exclude`` matrix is merged with the
            validation items.

    Returns:
        The metrics of :func:`evaluate`; only ``{"n_users": 0}`` (and a logged warning)
        when the part is empty, e.g. a split made without a validation share.

    Raises:
        ConfigError: for an unknown ``part``.
    """
    from mgrec.data.dataset import to_csr

    if part not in ("test", "valid"):
        raise ConfigError(f"part must be 'test' or 'valid', got {part!r}")
    frame = getattr(split, part, None)
    if frame is None or len(frame) == 0:
        logger.warning("the split has no %s interactions; nothing to evaluate", part)
        return {"n_users": 0}
    shape = (dataset.n_users, dataset.n_items)
    truth = to_csr(frame, *shape)
    exclude = kw.pop("exclude", None)
    if part == "test" and split.valid is not None and len(split.valid):
        valid = to_csr(split.valid, *shape)
        exclude = valid if exclude is None else _union(valid, exclude)
        if getattr(split, "protocol", None) in OBSERVE_VALID:
            model = model.observed(*_event_columns(split.valid))
    return evaluate(model, truth, exclude=exclude, **kw)  # type: ignore[arg-type]


def _event_columns(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``users, items, times, weights`` of an interaction frame, in time order when it has times."""
    if "timestamp" in frame.columns:
        frame = frame.sort_values("timestamp", kind="stable")
    return (frame["user"].to_numpy(np.int64), frame["item"].to_numpy(np.int64),
            frame["timestamp"].to_numpy() if "timestamp" in frame.columns else None,
            frame["weight"].to_numpy(np.float32) if "weight" in frame.columns else None)


# ------------------------------------------------------------------------------ sampled
def evaluate_sampled(
    model: Recommender,
    truth: sp.csr_matrix,
    *,
    exclude: sp.csr_matrix | None = None,
    n_negatives: int = 100,
    rng: np.random.Generator,
    ks: Iterable[int] = DEFAULT_KS,
    metrics: Iterable[str] = DEFAULT_METRICS,
    users: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Sampled-negative metrics; NOT comparable with :func:`evaluate` (warns when called).

    For each user and each of its relevant items, the positive is ranked by
    ``model.score`` against ``n_negatives`` distinct items drawn uniformly from those the
    user never interacted with (not in ``truth``, the model's training items or
    ``exclude``); fewer when fewer remain. Ties count against the positive. Each list has
    one relevant item; metrics are averaged over a user's positives, then over users.

    Args:
        model: a fitted recommender.
        truth: ``(n_users, n_items)`` sparse matrix of relevant items.
        exclude: further ``(n_users, n_items)`` interactions never drawn as negatives.
        n_negatives: negatives per positive.
        rng: the source of randomness.
        ks: cut-offs.
        metrics: names from :data:`mgrec.metrics.METRICS`.
        users: user codes to evaluate; default all users with a truth item.
        chunk_size: users scored at once; default from :func:`default_chunk_size`.

    Returns:
        ``{"sampled_ndcg@10": mean, ..., "sampled_n_users": ..., "sampled_n_positives": ...}``.

    Raises:
        ConfigError: for bad arguments or an unfitted model.
        DataError: when the matrices do not match the model or nothing can be evaluated.
    """
    warnings.warn(SAMPLED_WARNING, SampledMetricsWarning, stacklevel=2)
    ks, metrics = check_ks(ks), check_metrics(metrics)
    if isinstance(n_negatives, bool) or not isinstance(n_negatives, (int, np.integer)):
        raise ConfigError(f"n_negatives must be a positive integer, got {n_negatives!r}")
    if n_negatives < 1:
        raise ConfigError(f"n_negatives must be a positive integer, got {n_negatives!r}")
    truth = canonical_truth(truth)
    n_items = _check_shapes(model, truth, exclude)
    users = _eval_users(truth, users)
    forbidden = truth
    for extra in (model.seen_, exclude):
        if extra is not None:
            forbidden = _union(forbidden, extra)
    kmax = max(ks)
    parts: dict[str, list[np.ndarray]] = {}
    n_pos_total = n_short = 0
    for u in _chunks(users, _chunk_size(chunk_size, n_items), False, "sampled"):
        scores = np.asarray(model.score(u), dtype=np.float32)
        ranks, owner = [], []
        for b, user in enumerate(u):
            pos = truth.indices[truth.indptr[user] : truth.indptr[user + 1]]
            banned = forbidden.indices[forbidden.indptr[user] : forbidden.indptr[user + 1]]
            n_allowed = n_items - len(banned)
            m = min(int(n_negatives), n_allowed)
            n_short += m < n_negatives
            neg = _sample_allowed(rng, banned, n_allowed, len(pos), m)
            ranks.append(1 + (scores[b, neg] >= scores[b, pos][:, None]).sum(axis=1))
            owner.append(np.full(len(pos), b))
        rank, who = np.concatenate(ranks), np.concatenate(owner)
        hits = np.zeros((len(rank), kmax), dtype=bool)
        inside = rank <= kmax
        hits[np.flatnonzero(inside), rank[inside] - 1] = True
        per_user = np.bincount(who, minlength=len(u)).astype(np.float64)
        for key, v in compute(hits, np.ones(len(rank)), ks, metrics).items():
            parts.setdefault(key, []).append(np.bincount(who, v, len(u)) / per_user)
        n_pos_total += len(rank)
    if n_short:
        logger.warning("%d users had fewer than %d items left to draw negatives from",
                       n_short, n_negatives)
    result = {f"sampled_{key}": float(np.concatenate(v).mean()) for key, v in parts.items()}
    result["sampled_n_users"] = float(len(users))
    result["sampled_n_positives"] = float(n_pos_total)
    return result


def _sample_allowed(
    rng: np.random.Generator, banned: np.ndarray, n_allowed: int, n_rows: int, m: int
) -> np.ndarray:
    """``(n_rows, m)`` item codes, each row ``m`` distinct items outside sorted ``banned``.

    Draws positions ``j`` in ``[0, n_allowed)`` and maps each to the ``j``-th item not in
    ``banned``: ``j + #{b in banned : b - rank(b) <= j}``.
    """
    if m == 0:
        return np.zeros((n_rows, 0), dtype=np.int64)
    picks = np.stack([rng.choice(n_allowed, size=m, replace=False) for _ in range(n_rows)])
    gaps = banned.astype(np.int64) - np.arange(len(banned), dtype=np.int64)
    return picks + np.searchsorted(gaps, picks, side="right")


# ------------------------------------------------------------------------------ helpers
def _check_shapes(model: Recommender, truth: sp.csr_matrix, exclude: sp.spmatrix | None) -> int:
    """Check that the matrices fit the model; return the number of items."""
    n_items = int(getattr(model, "n_items_", 0) or 0)
    if n_items <= 0:
        raise ConfigError("the model is not fitted (it has no items)")
    if truth.shape[1] != n_items:
        raise DataError(
            f"the truth matrix has {truth.shape[1]} item columns but the model knows "
            f"{n_items} items; evaluate on the dataset the model was trained on"
        )
    if exclude is not None and exclude.shape != truth.shape:
        raise DataError(
            f"the exclude matrix is {exclude.shape[0]}x{exclude.shape[1]} but the truth "
            f"matrix is {truth.shape[0]}x{truth.shape[1]}"
        )
    n_users = int(getattr(model, "n_users_", 0) or 0)
    if n_users and truth.shape[0] != n_users:
        raise DataError(
            f"the truth matrix has {truth.shape[0]} user rows but the model knows {n_users} users"
        )
    return n_items


def _eval_users(truth: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
    """Sorted distinct user codes to evaluate: those asked for that have a truth item."""
    counts = np.diff(truth.indptr)
    if users is None:
        chosen = np.flatnonzero(counts > 0).astype(np.int64)
    else:
        asked = np.unique(np.asarray(users).reshape(-1))
        if asked.size and (
            not np.issubdtype(asked.dtype, np.integer)
            or asked.min() < 0
            or asked.max() >= truth.shape[0]
        ):
            raise ConfigError(f"user codes must be integers in [0, {truth.shape[0]})")
        asked = asked.astype(np.int64)
        chosen = asked[counts[asked] > 0]
        if len(chosen) < len(asked):
            logger.info("skipping %d users without truth items", len(asked) - len(chosen))
    if len(chosen) == 0:
        raise DataError("nothing to evaluate: no selected user has a relevant item in the truth")
    return chosen


def _chunk_size(chunk_size: int | None, n_items: int) -> int:
    if chunk_size is None:
        return default_chunk_size(n_items, MEMORY_BUDGET_BYTES)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _chunks(users: np.ndarray, size: int, progress: bool, desc: str) -> Iterator[np.ndarray]:
    """Consecutive slices of ``users`` of at most ``size``, with an optional progress bar."""
    with tqdm(total=len(users), desc=desc, unit="user", disable=not progress) as bar:
        for start in range(0, len(users), size):
            part = users[start : start + size]
            yield part
            bar.update(len(part))


def _pad(items: np.ndarray, k: int) -> np.ndarray:
    """Right-pad ``(B, K)`` item codes with ``-1`` up to ``k`` columns."""
    if items.shape[1] >= k:
        return items[:, :k]
    return np.pad(items, ((0, 0), (0, k - items.shape[1])), constant_values=-1)


def _union(a: sp.spmatrix, b: sp.spmatrix) -> sp.csr_matrix:
    """Binary CSR union of two same-shape sparse matrices."""
    if a.shape != b.shape:
        raise DataError(f"matrix shapes differ: {a.shape} and {b.shape}")
    return _binary(_binary(a) + _binary(b))


def _binary(m: sp.spmatrix) -> sp.csr_matrix:
    """CSR copy of ``m`` with every stored non-zero set to 1."""
    out = canonical_truth(sp.csr_matrix(m, dtype=np.float32)).copy()
    out.data[:] = 1.0
    return out
