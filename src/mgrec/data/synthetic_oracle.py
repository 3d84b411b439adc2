"""The synthetic world's own scores of test requests, with chosen terms left out: an oracle.

The generator (:mod:`mgrec.data.synthetic`) draws every event from ``softmax(score)``. Ranking
the catalogue by that score is the best any model can do on average, and ranking it with
some terms removed shows how much of the world's signal those terms carry. A learned model
cannot lose more from a granularity than the world puts into it, short of noise, so this bounds
what an ablation of the fused model can show, before anything is trained.

The terms and the granularity that reads each (:data:`TERM_GROUPS`):

* ``user``: the user's own taste (``taste``) and the price sensitivity set by age (``price``);
* ``item``: item popularity (``popularity``); content shapes every term through the item's
  latent vector and cluster, so no term is content's alone;
* ``behavior``: the successor cluster and item of the previous event;
* ``social``: the friends' recent items;
* ``time``: day part, weekend, popularity drift and taste drift.

The state terms are rebuilt from the event log: the previous event of the user, and for each
friend the last ``social_recent`` events before the request that fall within
``social_window_days`` (the simulator keeps the same ring buffer, per round of events).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from mgrec.data.synthetic import DAY, STATIC_TERMS, SyntheticConfig, _latent_world, _ragged, _static_scores

__all__ = ["TERM_GROUPS", "expected_gain", "oracle_ndcg"]

#: granularity -> the score terms it alone can read.
TERM_GROUPS: dict[str, tuple[str, ...]] = {
    "user": ("taste", "price"),
    "item": ("popularity",),
    "behavior": ("seq_cluster", "seq_item"),
    "social": ("social",),
    "time": ("daypart", "weekend", "pop_drift", "taste_drift"),
}
_STATE_TERMS = ("seq_cluster", "seq_item", "social")


def oracle_ndcg(cfg: SyntheticConfig, seed: int, requests: pd.DataFrame, history: pd.DataFrame, *,
                variants: Mapping[str, Iterable[str]] | None = None, k: int = 10,
                chunk: int = 1024) -> dict[str, float]:
    """NDCG@``k`` of ranking by the world's score, whole and with terms removed.

    Args:
        cfg, seed: the world (as given to :func:`~mgrec.data.synthetic.make_synthetic`).
        requests: ``user``, ``item``, ``timestamp``: one event per row to rank for (e.g. a
            ``loo`` split's test events); ``item`` is the relevant one. An optional
            ``request_time`` column is the time the ranking is asked for (default: the event's
            own); the scores read the world at that time, as a model would.
        history: every event the requests may see (the others of the split): the user's
            previous event, the items to exclude, the friends' recent items.
        variants: name -> score terms to leave out (of :data:`STATIC_TERMS` and
            ``seq_cluster``, ``seq_item``, ``social``); default: ``all`` (none left out) and
            ``no-<granularity>`` for each of :data:`TERM_GROUPS`.
        k: the cut-off.
        chunk: requests scored per block (memory ``chunk * n_items`` floats).

    Returns:
        variant name -> mean NDCG@``k`` over the requests.
    """
    if variants is None:
        variants = {"all": (), **{f"no-{g}": terms for g, terms in TERM_GROUPS.items()}}
    known = set(STATIC_TERMS) | set(_STATE_TERMS)
    for name, terms in variants.items():
        bad = sorted(set(terms) - known)
        if bad:
            raise ValueError(f"variant {name!r}: unknown score terms {bad} (known: {sorted(known)})")
    w = _latent_world(cfg, seed)
    items = w.items
    hist = history.sort_values(["timestamp", "user"], kind="stable")
    h_user = hist["user"].to_numpy(np.int64)
    h_item = hist["item"].to_numpy(np.int64)
    h_ts = hist["timestamp"].to_numpy(np.int64)
    by_user = np.argsort(h_user, kind="stable")  # each user's events in time order
    starts = np.searchsorted(h_user[by_user], np.arange(cfg.n_users + 1))
    users = requests["user"].to_numpy(np.int64)
    times = requests["request_time" if "request_time" in requests else "timestamp"].to_numpy(np.int64)
    relevant = requests["item"].to_numpy(np.int64)
    gains = {name: np.zeros(len(users)) for name in variants}
    window = int(cfg.social_window_days * DAY)
    c_size = np.bincount(items.cluster, minlength=cfg.n_clusters)
    by_cluster = np.argsort(items.cluster, kind="stable")
    for lo in range(0, len(users), chunk):
        u, t = users[lo:lo + chunk], times[lo:lo + chunk]
        rows = np.arange(len(u))
        # the user's events before t: seen items (excluded) and the previous item
        none = np.empty(0, np.int64)  # a start for each list: a chunk may have no friends at all
        seen_rows, seen_items, prev = [none], [none], np.full(len(u), -1, np.int64)
        friend_rows, friend_items = [none], [none]
        for r, (uu, tt) in enumerate(zip(u.tolist(), t.tolist())):
            ev = by_user[starts[uu]:starts[uu + 1]]
            ev = ev[h_ts[ev] < tt]
            seen_rows.append(np.full(len(ev), r)), seen_items.append(h_item[ev])
            if len(ev):
                prev[r] = h_item[ev[-1]]
            for f in w.adj.indices[w.adj.indptr[uu]:w.adj.indptr[uu + 1]].tolist():
                fe = by_user[starts[f]:starts[f + 1]]
                fe = fe[h_ts[fe] < tt][-cfg.social_recent:]
                fe = fe[h_ts[fe] >= tt - window]
                friend_rows.append(np.full(len(fe), r)), friend_items.append(h_item[fe])
        seen = (np.concatenate(seen_rows), np.concatenate(seen_items))
        friends = (np.concatenate(friend_rows), np.concatenate(friend_items))
        has = rows[prev >= 0]
        target = items.succ_cluster[items.cluster[prev[has]]]
        c_rows, c_idx = _ragged((np.cumsum(c_size) - c_size)[target], c_size[target])
        unreleased = items.release[None, :] > t[:, None]
        for name, terms in variants.items():
            drop = frozenset(terms)
            s = _static_scores(cfg, items.terms, w.taste, w.drift, w.sens, u, t,
                               drop=drop & set(STATIC_TERMS))
            if "seq_cluster" not in drop:
                s[has[c_rows], by_cluster[c_idx]] += cfg.w_seq_cluster
            if "seq_item" not in drop:
                s[has, items.succ_item[prev[has]]] += cfg.w_seq_item
            if "social" not in drop:
                s[friends] += cfg.w_social  # once per item, however many friends (as simulated)
            s[unreleased] = -np.inf
            s[seen] = -np.inf
            own = s[rows, relevant[lo:lo + chunk]][:, None]
            better, ties = (s > own).sum(axis=1), (s == own).sum(axis=1) - 1
            gains[name][lo:lo + chunk] = expected_gain(better, ties, k)
    return {name: float(g.mean()) for name, g in gains.items()}


def expected_gain(better: np.ndarray, ties: np.ndarray, k: int) -> np.ndarray:
    """NDCG@``k`` of one relevant item with ``better`` items scored above it and ``ties``
    others scored the same, the ties in random order: the mean of ``1 / log2(rank + 2)`` over
    ranks ``better .. better + ties`` (0 from rank ``k`` on)."""
    cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    top = np.minimum(better + ties + 1, k)
    return (cum[top] - cum[np.minimum(better, k)]) / (ties + 1)
