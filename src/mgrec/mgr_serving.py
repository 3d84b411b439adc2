"""Explanations and cold start for the fused model (mixed into :class:`mgrec.mgr.MGR`).

* :meth:`ServingMixin.query_vectors` / :meth:`ServingMixin.observe`: user vectors for an item
  index, cached until live events change the user's context (or a friend's).
* :meth:`ServingMixin.explain`: how much each granularity adds to a user's score of an item
  (exact ``w_g (v_g . q)`` with weighted fusion, else leave-one-out score differences).
* :meth:`ServingMixin.recommend_context`: recommendations for a user the model has never
  seen, from whatever is known: a few items (with times), profile features, friends who are
  known users, the request time.
* :meth:`ServingMixin.add_items` / :meth:`ServingMixin.score_new_items`: items that did not
  exist at training time are represented by the item tower's content part alone, and added
  items are ranked by the ordinary :meth:`~mgrec.recommender.Recommender.recommend`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from mgrec.baselines import check_fitted, check_users
from mgrec.data.dataset import FeatureTable
from mgrec.errors import ConfigError, DataError
from mgrec.feature_arrays import feature_arrays
from mgrec.recommender import topk

__all__ = ["ServingMixin"]


class ServingMixin:
    """Explanation and cold-start methods; expects the attributes :class:`MGR` sets."""

    name: str
    net_: Any
    context_: Any
    items_: Any
    item_encoder_: Any
    n_items_: int
    seen_: sp.csr_matrix | None
    index_: Any
    item_item_: Any
    prior_: Any
    social_items_: Any

    def _init_serving(self) -> None:
        self.user_ids_: list[str] = []
        self.item_ids_: list[str] = []
        self.base_items_: int = 0
        self._extra_vectors: torch.Tensor | None = None
        self._user_index: dict[str, int] = {}
        self._item_index: dict[str, int] = {}

    def _set_ids(self, users: Sequence[str], items: Sequence[str]) -> None:
        self.user_ids_, self.item_ids_ = [str(u) for u in users], [str(i) for i in items]
        self._user_index = {u: k for k, u in enumerate(self.user_ids_)}
        self._item_index = {i: k for k, i in enumerate(self.item_ids_)}

    def _item_matrix(self) -> torch.Tensor:
        """``(n_items_, D)`` item vectors: the trained catalogue, then added items."""
        q = self.net_.item_vectors()
        if self._extra_vectors is not None:
            q = torch.cat([q, self._extra_vectors], dim=0)
        return q

    #: Users whose serving vectors :meth:`query_vectors` keeps.
    vector_cache_size: int = 100_000

    def _reset_vector_cache(self) -> None:
        self._vector_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._context_gen = 0

    def _own_caches(self) -> None:
        super()._own_caches()  # type: ignore[misc]
        self._reset_vector_cache()

    # ------------------------------------------------------- the serving index path
    def query_vectors(self, users: np.ndarray) -> np.ndarray:
        """``(B, D)`` fused user vectors ``p_{u,c}`` in the current context (see :meth:`score`),
        followed by the item-item part's block when the model has one (``D + r`` columns).
        The friends' items part and the profile prior are not in these vectors; :meth:`recommend`
        scores the users they apply to exactly instead of through the index.

        A known user's vector depends only on the context (history, friends' items, the
        request time after the last event), so computed vectors are kept (up to
        ``vector_cache_size`` users, least recently used first out) until :meth:`observe`
        changes the context of that user or of one of their friends.
        """
        check_fitted(self.net_ is not None, self.name)
        assert self.net_ is not None and self.context_ is not None
        users = check_users(users, self.context_.n_users)
        cache, gen = self._vector_cache, self._context_gen
        out: list[np.ndarray | None] = [cache.get(int(u)) for u in users]
        missing = [n for n, v in enumerate(out) if v is None]
        if missing:
            context = self.context_
            if self.net_.training:
                self.net_.eval()
            with torch.inference_mode():
                vecs = self.net_.user_vectors(context.batch(users[missing]))[0].numpy()
            if self.item_item_ is not None:  # the linear part's block: scale * x_u L
                vecs = np.hstack([vecs, self.item_item_.user_vectors(self.seen_[users[missing]])])
            for n, v in zip(missing, vecs, strict=True):
                out[n] = v
            if gen == self._context_gen and self.vector_cache_size > 0:  # no event arrived meanwhile
                for n, v in zip(missing, vecs, strict=True):
                    cache[int(users[n])] = v
                while len(cache) > self.vector_cache_size:
                    cache.popitem(last=False)
        for u in users:
            if int(u) in cache:
                cache.move_to_end(int(u))
        return np.stack(out).astype(np.float32, copy=False)

    def item_vectors(self) -> np.ndarray:
        """``(n_items, D)`` item vectors ``q_v`` (added items included), followed by the
        item-item part's block ``R_v`` when the model has one."""
        check_fitted(self.net_ is not None, self.name)
        with torch.no_grad():
            self.net_.eval()
            q = self._item_matrix().numpy().copy()
        if self.item_item_ is not None:
            q = np.hstack([q, self.item_item_.item_vectors(self.n_items_)])
        return q

    def observe(self, users: np.ndarray, items: np.ndarray, times: np.ndarray | None = None,
                weights: np.ndarray | None = None) -> None:
        """New events enter the users' histories: the behaviour encoder reads them, friends
        see them, and the request time moves to the latest event + 1 s (no retraining)."""
        check_fitted(self.net_ is not None, self.name)
        assert self.context_ is not None
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        base = items < self.context_.n_items  # added items have no embedding in the history
        context = self.context_.with_events(users[base], items[base],
                                            None if times is None else np.asarray(times)[base],
                                            None if weights is None else np.asarray(weights)[base])
        super().observe(users, items, times, weights)
        self._context_gen += 1
        self.context_ = context
        # the users' own vectors and those of everyone who counts them as a friend are stale
        stale = np.flatnonzero(np.isin(context.friends, users).any(axis=1)).tolist() + users.tolist()
        for u in stale:
            self._vector_cache.pop(int(u), None)

    # --------------------------------------------------------------- explanations
    def explain(self, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Per-granularity contributions to the scores of ``items`` for ``users``.

        Args:
            users: ``(B,)`` user codes.
            items: ``(B, K)`` item codes (or ``(K,)``, the same items for every user) from the
                trained catalogue.

        Returns:
            Granularity -> ``(B, K)`` ``float32``. With ``weighted`` fusion the values sum to
            the score; otherwise each is ``score(all) - score(without g)`` (0 where absent).
        """
        check_fitted(self.net_ is not None, self.name)
        users = check_users(users, self.context_.n_users)
        items = np.asarray(items, dtype=np.int64)
        if items.ndim == 1:
            items = np.broadcast_to(items, (len(users), len(items)))
        if items.ndim != 2 or items.shape[0] != len(users):
            raise ConfigError(f"items must have shape (B, K) with B = {len(users)}, got {items.shape}")
        if items.size and (items.min() < 0 or items.max() >= self.base_items_):
            raise ConfigError(f"explain() takes item codes of the trained catalogue (0..{self.base_items_ - 1})")
        with torch.no_grad():
            self.net_.eval()
            batch = self.context_.batch(users)
            out = self.net_.contributions(batch, torch.from_numpy(np.ascontiguousarray(items)))
        res = self._with_item_item(out, self.seen_[users] if self.seen_ is not None else None, items)
        self._with_social_items(res, batch, items)
        prior = self._prior_users(users)
        if prior.any():
            ua = self.context_.user_arrays
            u = users[prior]
            self._prior_explained(res, prior, ua.cat[u], ua.bag_idx[u], ua.bag_w[u], items[prior])
        return res

    def _with_social_items(self, res: dict[str, np.ndarray], batch: Any, items: np.ndarray) -> None:
        """The friends' items part's score added to ``social`` (exact, additive)."""
        if self.social_items_ is None or "social" not in res:
            return
        part = self.social_items_.scores(batch.friend_items.numpy(), self.context_.n_items, self.n_items_)
        res["social"] += np.take_along_axis(part, items, axis=1)

    def _prior_explained(self, res: dict[str, np.ndarray], rows: np.ndarray | slice, cat: np.ndarray,
                         bag_idx: np.ndarray, bag_w: np.ndarray, items: np.ndarray) -> None:
        """Rows ranked by the profile prior: its whole score is the ``user`` granularity's
        (the profile), every other granularity contributes 0."""
        u = self.prior_.user_vectors(cat, bag_idx, bag_w)  # (B, k + 1)
        q = self.prior_.item_vectors(self.n_items_)[items]  # (B, K, k + 1)
        for g in res:
            res[g][rows] = 0.0
        if "user" in res:
            res["user"][rows] = np.einsum("bd,bkd->bk", u, q).astype(np.float32)

    def _with_item_item(self, out: Mapping[str, torch.Tensor], history: sp.spmatrix | None,
                        items: np.ndarray) -> dict[str, np.ndarray]:
        """Contributions as arrays, the item-item part's score added to ``behavior`` (its
        granularity: exact, and equal to its leave-one-out delta)."""
        res = {g: v.numpy().astype(np.float32, copy=True) for g, v in out.items()}
        part = self.item_item_
        if part is not None and history is not None and "behavior" in res:
            u = part.user_vectors(history)  # (B, r)
            r = part.item_vectors(self.n_items_)[items]  # (B, K, r)
            res["behavior"] += np.einsum("br,bkr->bk", u, r).astype(np.float32)
        return res

    def explain_context(
        self,
        history_items: Sequence[str | int],
        items: np.ndarray,
        *,
        history_times: Sequence[float] | None = None,
        features: Mapping[str, Any] | None = None,
        friends: Sequence[str | int] | None = None,
        time: float | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`explain` for a user unknown to the model, described as in
        :meth:`recommend_context`.

        Returns:
            Granularity -> ``(1, K)`` ``float32`` contributions to the scores of ``items``.
        """
        check_fitted(self.net_ is not None, self.name)
        items = np.asarray(items, dtype=np.int64).reshape(1, -1)
        if items.size and (items.min() < 0 or items.max() >= self.base_items_):
            raise ConfigError("explain_context() takes item codes of the trained catalogue "
                              f"(0..{self.base_items_ - 1})")
        batch = self._cold_batch(history_items, history_times, features, friends, time)
        with torch.no_grad():
            self.net_.eval()
            out = self.net_.contributions(batch, torch.from_numpy(np.ascontiguousarray(items)))
        res = self._with_item_item(out, self._history_row(history_items), items)
        self._with_social_items(res, batch, items)
        if self._prior_applies(history_items, friends):
            self._prior_explained(res, slice(None), batch.user_cat.numpy(), batch.user_bag.numpy(),
                                  batch.user_bag_w.numpy(), items)
        return res

    def _prior_applies(self, history_items: Sequence[Any], friends: Sequence[Any] | None) -> bool:
        """Whether the profile prior ranks a new user with this history and these friends."""
        return self.prior_ is not None and not len(history_items) and not friends

    def _history_row(self, history_items: Sequence[str | int]) -> sp.csr_matrix:
        """A one-row user x item matrix of a context's history items."""
        hist = [self._code(v, self._item_index, self.base_items_, "history") for v in history_items]
        cols = np.unique(np.asarray(hist, dtype=np.int64))
        return sp.csr_matrix((np.ones(len(cols), np.float32), (np.zeros(len(cols), np.int64), cols)),
                             shape=(1, self.n_items_))

    def _cold_batch(self, history_items: Sequence[str | int], history_times: Sequence[float] | None,
                    features: Mapping[str, Any] | None, friends: Sequence[str | int] | None,
                    time: float | None) -> Any:
        hist = [self._code(v, self._item_index, self.base_items_, "history") for v in history_items]
        fr = [self._code(v, self._user_index, self.context_.n_users, "friends") for v in friends or []]
        return self.context_.cold_batch(hist, history_times, features, fr, time)

    # ----------------------------------------------------------------- cold users
    def recommend_context(
        self,
        history_items: Sequence[str | int],
        *,
        history_times: Sequence[float] | None = None,
        features: Mapping[str, Any] | None = None,
        friends: Sequence[str | int] | None = None,
        time: float | None = None,
        k: int = 10,
        filter_seen: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for a user unknown to the model.

        Args:
            history_items: items the user interacted with: raw ids (``str``) or codes (``int``).
            history_times: their unix times (``None``: in the given order, times unknown).
            features: raw user feature values by name; unknown values count as missing.
            friends: known users who are friends: raw ids or codes.
            time: request time in unix seconds (``None``: unknown).
            k: list length.
            filter_seen: drop the history items from the list.

        Returns:
            ``(items, scores)``, each ``(k,)``: item codes (``-1`` padding) and scores.

        Raises:
            DataError: for an unknown item, user or feature.
        """
        check_fitted(self.net_ is not None, self.name)
        hist = [self._code(v, self._item_index, self.base_items_, "history") for v in history_items]
        batch = self._cold_batch(hist, history_times, features, friends, time)
        if self._prior_applies(hist, friends):  # profile only: the prior ranks (exactly, no index)
            scores = self.prior_.scores(batch.user_cat.numpy(), batch.user_bag.numpy(), batch.user_bag_w.numpy(),
                                        self.n_items_)
            idx, vals = topk(scores, k)
            idx[~np.isfinite(vals)] = -1
            return idx[0], vals[0]
        row = self._history_row(hist) if self.item_item_ is not None else None
        with torch.no_grad():
            self.net_.eval()
            p = self.net_.user_vectors(batch)[0]
            if self.index_ is not None and self.social_items_ is None:
                query = p.numpy() if row is None else np.hstack([p.numpy(), self.item_item_.user_vectors(row)])
                idx, vals = self.index_.search(query, k, exclude=[np.unique(np.asarray(hist, np.int64))
                                                                  if filter_seen else np.zeros(0, np.int64)])
                idx = np.asarray(idx, dtype=np.int64)
                idx[~np.isfinite(vals)] = -1
                return idx[0], np.asarray(vals[0], dtype=np.float32)
            scores = (p @ self._item_matrix().T).numpy()
        if row is not None:
            scores += self.item_item_.scores(row, self.n_items_)
        if self.social_items_ is not None:
            scores += self.social_items_.scores(batch.friend_items.numpy(), self.context_.n_items, self.n_items_)
        if filter_seen and hist:
            scores[0, hist] = -np.inf
        idx, vals = topk(scores, k)
        idx[~np.isfinite(vals)] = -1
        return idx[0], vals[0]

    @staticmethod
    def _code(value: str | int, index: Mapping[str, int], n: int, field: str) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= int(value) < n:
                raise DataError(f"code {int(value)} is out of range 0..{n - 1}", field=field)
            return int(value)
        if isinstance(value, str) and value in index:
            return index[value]
        raise DataError(f"unknown id {value!r}", field=field)

    # ----------------------------------------------------------------- new items
    def score_new_items(self, item_features: FeatureTable) -> np.ndarray:
        """Content-only vectors ``q_v`` of items unknown to the model.

        Args:
            item_features: one row per new item, with the training item feature columns.

        Returns:
            ``(n_new, D)`` ``float32``; their scores for a user are ``p_{u,c} . q_v``.

        Raises:
            ConfigError: when the model was trained without item content.
            DataError: when the table lacks a feature or holds it as another kind.
        """
        check_fitted(self.net_ is not None, self.name)
        if self.item_encoder_ is None:
            raise ConfigError("mgr: the model was trained without item features (granularity 'item'), "
                              "so it cannot represent new items")
        enc = self.item_encoder_.transform(item_features)
        fa = feature_arrays(enc, len(item_features), self.items_.features.bag_idx.shape[1])
        feats = [torch.from_numpy(np.ascontiguousarray(a)) for a in (fa.cat, fa.num, fa.bag_idx, fa.bag_w)]
        time = torch.from_numpy(self.items_.new_item_time_feats(len(item_features)))
        with torch.no_grad():
            self.net_.eval()
            vec = self.net_.item_tower.vectors_for_features(*feats, time)
        return vec.numpy().astype(np.float32, copy=False)

    def add_items(self, table: FeatureTable, ids: Sequence[str] | None = None) -> np.ndarray:
        """Add new items to the catalogue, represented by their content alone.

        Args:
            table: their features (as for :meth:`score_new_items`).
            ids: raw ids of the new items (default ``new:<code>``); must be unused.

        Returns:
            The new items' codes ``n_items .. n_items + n - 1``; :meth:`score` and
            :meth:`recommend` rank them from then on (no user has seen them).
        """
        vec = torch.from_numpy(self.score_new_items(table))
        codes = np.arange(self.n_items_, self.n_items_ + len(vec), dtype=np.int64)
        names = [f"new:{c}" for c in codes] if ids is None else [str(i) for i in ids]
        if len(names) != len(vec):
            raise DataError(f"{len(names)} ids for {len(vec)} new items", field="ids")
        taken = [n for n in names if n in self._item_index] + [n for n in set(names) if names.count(n) > 1]
        if taken:
            raise DataError(f"item id {taken[0]!r} is already in use", field="ids")
        self._extra_vectors = vec if self._extra_vectors is None else torch.cat([self._extra_vectors, vec])
        self._set_ids(self.user_ids_, self.item_ids_ + names)
        self.n_items_ += len(vec)
        if self.seen_ is not None:
            self.seen_ = sp.hstack([self.seen_, sp.csr_matrix((self.seen_.shape[0], len(vec)), dtype=np.float32)],
                                   format="csr")
        return codes

    # --------------------------------------------------------------- persistence
    def _serving_meta(self) -> dict[str, Any]:
        return {"user_ids": self.user_ids_, "item_ids": self.item_ids_, "base_items": self.base_items_}

    def _serving_arrays(self) -> dict[str, np.ndarray]:
        if self._extra_vectors is None:
            return {}
        return {"extra_item_vectors": self._extra_vectors.numpy().copy()}

    def _load_serving(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self._set_ids(meta["user_ids"], meta["item_ids"])
        self.base_items_ = int(meta["base_items"])
        extra = arrays.get("extra_item_vectors")
        self._extra_vectors = None if extra is None else torch.from_numpy(np.array(extra, dtype=np.float32))
        n_extra = 0 if extra is None else len(extra)
        if self.base_items_ + n_extra != self.n_items_ or len(self.item_ids_) != self.n_items_:
            raise ValueError(f"{self.base_items_} + {n_extra} items do not match n_items {self.n_items_}")
