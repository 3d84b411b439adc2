"""From interactions to padded :class:`~mgrec.encoders.base.Batch` tensors for the fused model.

:class:`ContextBuilder` holds what the model may know about every user as flat numpy arrays
(built once from the *history* frame, e.g. the training split):

* each user's events in time order (source order without timestamps), CSR-like
  (``indptr``, ``items``, ``times``, ``weights``);
* each user's friends (social links symmetrised, the ``max_friends`` strongest first: link
  weight, then the friend's latest activity, then code);
* encoded user features as padded arrays.

:meth:`ContextBuilder.batch` turns ``B`` (user, context) rows into a :class:`Batch` by fancy
indexing only; no Python loop runs per event. ``cutoff`` makes training examples without
leakage: row ``r`` sees only its user's events before position ``cutoff[r]``, and friends'
events strictly before the row's time.

The item side (:func:`build_item_arrays`) and feature padding live in
:mod:`mgrec.feature_arrays` and are re-exported here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from mgrec.data.dataset import Dataset, FeatureTable
from mgrec.data.features import EncodedFeatures, FeatureEncoder
from mgrec.encoders.base import Batch
from mgrec.errors import ConfigError, DataError
from mgrec.feature_arrays import MAX_TOKENS, FeatureArrays, ItemArrays, build_item_arrays, feature_arrays

__all__ = ["ContextBuilder", "FeatureArrays", "ItemArrays", "build_item_arrays", "feature_arrays"]

class ContextBuilder:
    """Per-user context arrays and vectorised :class:`Batch` construction.

    Args:
        dataset: the dataset (sizes, social graph, whether it has time).
        history: interactions known as context (codes of ``dataset``), e.g. the train split.
        max_len: history events per row (the most recent ones).
        max_friends: friends per user.
        friend_len: recent items per friend.
        user_features: encoded user features (rows = user codes) or ``None``.
        max_tokens: bag tokens kept per user.
        whole: when ``history`` is one data-parallel rank's part (its users' and their friends'
            events), the values over every rank's part: ``activity`` (``(n_users,)``, see
            :meth:`_activity`), ``trained`` (``(n_users,)`` bool) and ``t_range`` (``(t_min,
            t_max)``), so that friend lists, trained ids and the time span are the ones the
            whole history gives.
    """

    def __init__(
        self,
        dataset: Dataset,
        history: pd.DataFrame,
        *,
        max_len: int,
        max_friends: int,
        friend_len: int,
        user_features: EncodedFeatures | None = None,
        max_tokens: int = MAX_TOKENS,
        whole: Mapping[str, Any] | None = None,
    ) -> None:
        for name, v in (("max_len", max_len), ("max_friends", max_friends), ("friend_len", friend_len)):
            if v < 1:
                raise ConfigError(f"{name} must be at least 1, got {v}")
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.max_len, self.max_friends, self.friend_len = max_len, max_friends, friend_len
        self.has_time = dataset.has_time and "timestamp" in history.columns
        u = history["user"].to_numpy(np.int64)
        ts = history["timestamp"].to_numpy(np.int64) if self.has_time else np.zeros(len(u), np.int64)
        order = np.lexsort((ts, u))  # stable: ties keep source order
        self.items = history["item"].to_numpy(np.int64)[order]
        self.times = ts[order]
        self.weights = history["weight"].to_numpy(np.float32)[order]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(u, minlength=self.n_users))]).astype(np.int64)
        # users with training events: only their ids were trained (events added later through
        # with_events() give a history, not a trained id)
        self.trained = np.diff(self.indptr) > 0
        self.t_min = float(ts.min()) if self.has_time and len(ts) else math.nan
        self.t_max = float(ts.max()) if self.has_time and len(ts) else math.nan
        activity = None
        if whole is not None:
            self.trained = np.asarray(whole["trained"], dtype=bool)
            self.t_min, self.t_max = (float(t) for t in whole["t_range"])
            activity = np.asarray(whole["activity"])
        self.friends = self._friend_table(dataset, activity)
        self.user_encoder: FeatureEncoder | None = user_features.encoder if user_features else None
        self.user_arrays = feature_arrays(user_features, self.n_users, max_tokens)
        self.max_tokens = max_tokens

    # ------------------------------------------------------------------ friends
    def _friend_table(self, dataset: Dataset, activity: np.ndarray | None = None) -> np.ndarray:
        """``(n_users, max_friends)`` friend codes padded with ``n_users``, strongest first (ties:
        the more active friend, by ``activity``, default :meth:`_activity`)."""
        if dataset.social is None or len(dataset.social) == 0:
            return np.full((self.n_users, self.max_friends), self.n_users, np.int64)
        activity = self._activity() if activity is None else activity
        return dataset.social.top_friends(self.n_users, activity, self.max_friends)

    def _activity(self) -> np.ndarray:
        """``(n_users,)`` how active each user is (:func:`~mgrec.data.dataset.user_activity`). Friends are ranked by it."""
        counts = np.diff(self.indptr)
        if not self.has_time:
            return counts
        return np.where(counts > 0, self.times[np.maximum(self.indptr[1:] - 1, 0)], -1)

    # ------------------------------------------------------------------- batches
    def examples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every history event as a training target.

        Returns:
            ``(users, positions, items, times)``: the user, the event's position in the user's
            time-ordered history, the item and its time (``nan`` without time).
        """
        counts = np.diff(self.indptr)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), counts)
        pos = np.arange(len(users), dtype=np.int64) - self.indptr[users]
        times = self.times.astype(np.float64) if self.has_time else np.full(len(users), np.nan)
        return users, pos, self.items.copy(), times

    def windows(self, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Blocks of training targets for sequence models, one transformer pass each.

        Each user's targets (positions ``1 .. n-1``) are cut, from the latest backwards, into
        blocks ``[first, end)`` of at most ``stride`` positions. A block's pass reads the
        window of the ``max_len`` events before position ``end - 1``; with
        ``stride <= max_len`` every target then sees at least ``max_len - stride`` earlier
        events (or its whole past), and every target lies in exactly one block.

        Args:
            stride: targets per block, ``1 .. max_len``.

        Returns:
            ``(users, first, end)`` int64 arrays, one entry per block.
        """
        if not 1 <= stride <= self.max_len:
            raise ConfigError(f"stride must lie in 1..{self.max_len}, got {stride}")
        n = np.diff(self.indptr)
        blocks = np.where(n > 1, -(-(n - 1) // stride), 0)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), blocks)
        k = np.arange(len(users), dtype=np.int64) - np.repeat(np.cumsum(blocks) - blocks, blocks)
        end = n[users] - k * stride
        return users, np.maximum(end - stride, 1), end

    def batch(
        self,
        users: np.ndarray,
        *,
        times: np.ndarray | None = None,
        cutoff: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        history: int | None = None,
    ) -> Batch:
        """Rows of (user, context).

        Args:
            users: ``(B,)`` user codes (``0 .. n_users-1``).
            times: ``(B,)`` request times in unix seconds (``nan``: unknown). Default: the
                event at ``cutoff`` when given, else the user's last event + 1 s (``nan``
                without time or history). Friends' items are those strictly before it.
            cutoff: ``(B,)`` positions in each user's history; only events before it are
                context. Default: the whole history.
            exclude: ``(B,)`` positions to leave out of the context (leave-target-out for
                order-free training); ``-1`` leaves nothing out.
            history: keep only the last ``history`` of the ``max_len`` history columns (for
                callers that give the history granularities' vectors themselves).

        Returns:
            The padded :class:`Batch` on the CPU.
        """
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if len(users) and (users.min() < 0 or users.max() >= self.n_users):
            raise ConfigError(f"user codes must lie in 0..{self.n_users - 1}")
        start, n = self.indptr[users], self.indptr[users + 1] - self.indptr[users]
        end = start + (n if cutoff is None else np.clip(np.asarray(cutoff, np.int64), 0, n))
        if times is None:
            times = self._default_times(start, end, n, cutoff is not None)
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        for name, arr in (("times", times), ("cutoff", cutoff), ("exclude", exclude)):
            if arr is not None and np.shape(arr) != users.shape:
                raise ConfigError(f"{name} must have shape {users.shape}, got {np.shape(arr)}")
        pos, valid = self._window(start, end, exclude)
        if history is not None:
            if not 1 <= history <= self.max_len:
                raise ConfigError(f"history must lie in 1..{self.max_len}, got {history}")
            pos, valid = pos[:, -history:], valid[:, -history:]
        hist_items = _gather(self.items, pos, valid, self.n_items)
        hist_times = _gather(self.times, pos, valid, 0)
        hist_w = _gather(self.weights, pos, valid, 0)
        friends = self.friends[users]
        ua = self.user_arrays
        return self._assemble(users, ua.cat[users], ua.num[users], ua.bag_idx[users], ua.bag_w[users],
                              hist_items, hist_times, hist_w, friends, times)

    def _default_times(self, start: np.ndarray, end: np.ndarray, n: np.ndarray, at_cut: bool) -> np.ndarray:
        if not self.has_time or len(self.items) == 0:
            return np.full(len(start), np.nan)
        if at_cut:  # the time of the target event itself
            inside = end < start + n
            t = self.times[np.minimum(end, len(self.times) - 1)].astype(np.float64)
            return np.where(inside, t, self._last_plus_one(start, n))
        return self._last_plus_one(start, n)

    def _last_plus_one(self, start: np.ndarray, n: np.ndarray) -> np.ndarray:
        """The user's last event + 1 s; for a user without events, the latest known event + 1 s
        (the model's "now": a user new since training is served after it)."""
        last = self.times[np.maximum(start + n - 1, 0)].astype(np.float64) + 1.0
        return np.where(n > 0, last, self.t_max + 1.0)

    def _window(
        self, start: np.ndarray, end: np.ndarray, exclude: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions ``(B, L)`` of the last ``max_len`` events before ``end`` (minus the
        excluded one), oldest first, and which of them are real (left padding)."""
        L = self.max_len
        if exclude is None:
            pos = end[:, None] - L + np.arange(L)[None, :]
            return pos, pos >= start[:, None]
        ex = start + np.asarray(exclude, np.int64)
        pos = end[:, None] - (L + 1) + np.arange(L + 1)[None, :]
        hit = (pos == ex[:, None]) & (np.asarray(exclude) >= 0)[:, None]
        drop = np.where(hit.any(axis=1), hit.argmax(axis=1), 0)  # else drop the oldest
        keep = np.arange(L + 1)[None, :] != drop[:, None]
        pos = pos[keep].reshape(len(start), L)
        return pos, pos >= start[:, None]

    def _friend_items(self, friends: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``(B, F, Lf)`` each friend's latest items strictly before the row's time."""
        Lf = self.friend_len
        if not (friends != self.n_users).any():  # no friends in the batch (or no social data)
            return np.full((*friends.shape, Lf), self.n_items, np.int64)
        ext = np.append(self.indptr, self.indptr[-1])  # the padding friend has no events
        f_start, f_end = ext[friends], ext[friends + 1]
        if self.has_time and len(self.items):
            t = np.broadcast_to(times[:, None], friends.shape)
            timed = np.isfinite(t)
            t_int = np.ceil(np.where(timed, t, 0.0)).astype(np.int64)
            cut = f_start + _count_before(self.times, f_start, f_end, t_int)
            f_end = np.where(timed, cut, f_end)
        pos = f_end[..., None] - Lf + np.arange(Lf)
        return _gather(self.items, pos, pos >= f_start[..., None], self.n_items)

    def _assemble(self, users: np.ndarray, cat: np.ndarray, num: np.ndarray, bag: np.ndarray,
                  bag_w: np.ndarray, hist_items: np.ndarray, hist_times: np.ndarray,
                  hist_w: np.ndarray, friends: np.ndarray, times: np.ndarray) -> Batch:
        def t(a: np.ndarray, dtype: Any) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))

        return Batch(
            users=t(users, np.int64), user_cat=t(cat, np.int64), user_num=t(num, np.float32),
            user_bag=t(bag, np.int64), user_bag_w=t(bag_w, np.float32),
            hist_items=t(hist_items, np.int64), hist_times=t(hist_times, np.float32),
            hist_weights=t(hist_w, np.float32), friends=t(friends, np.int64),
            friend_items=t(self._friend_items(friends, times), np.int64), time=t(times, np.float32),
        )

    # ------------------------------------------------------------- live events
    def with_events(
        self, users: np.ndarray, items: np.ndarray, times: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> ContextBuilder:
        """A copy that also knows these events (the serving path: no retraining).

        Each event is inserted into its user's history at its time (after events of the same
        time; at the end without time), so :meth:`batch` gives the user's history, request
        time and friends' recent items as if the events had been in the training data. The
        friend lists keep their order. ``self`` is left unchanged, so readers holding it see
        a consistent state.

        Args:
            users: ``(E,)`` user codes.
            items: ``(E,)`` item codes.
            times: ``(E,)`` unix seconds (required when the context has time).
            weights: ``(E,)`` event strengths (default 1).

        Raises:
            DataError: for codes out of range or missing times.
        """
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        w = np.ones(len(users), np.float32) if weights is None else np.asarray(weights, np.float32).reshape(-1)
        if items.shape != users.shape or w.shape != users.shape:
            raise DataError("users, items and weights must have one entry per event", field="events")
        if len(users) and (users.min() < 0 or users.max() >= self.n_users):
            raise DataError(f"user codes must lie in 0..{self.n_users - 1}", field="user_id")
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            raise DataError(f"item codes must lie in 0..{self.n_items - 1}", field="item_id")
        if self.has_time:
            if times is None or not np.isfinite(np.asarray(times, np.float64)).all():
                raise DataError("events need finite times: the model was trained with time", field="timestamp")
            ts = np.asarray(times, dtype=np.float64).reshape(-1).astype(np.int64)
            order = np.lexsort((ts, users))
            users, items, ts, w = users[order], items[order], ts[order], w[order]
            # after every event at or before the new one's time
            pos = self.indptr[users] + _count_before(self.times, self.indptr[users], self.indptr[users + 1], ts + 1)
        else:
            order = np.argsort(users, kind="stable")
            users, items, w = users[order], items[order], w[order]
            ts = np.zeros(len(users), np.int64)
            pos = self.indptr[users + 1]
        out = copy.copy(self)
        out.items = np.insert(self.items, pos, items)
        out.times = np.insert(self.times, pos, ts)
        out.weights = np.insert(self.weights, pos, w)
        added = np.bincount(users, minlength=self.n_users)
        out.indptr = self.indptr + np.concatenate([[0], np.cumsum(added)])
        if self.has_time and len(ts):
            out.t_max = max(self.t_max, float(ts.max())) if not math.isnan(self.t_max) else float(ts.max())
        return out

    def history(self, user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(items, times, weights)`` of one user's known events, oldest first."""
        s, e = self.indptr[user], self.indptr[user + 1]
        return self.items[s:e].copy(), self.times[s:e].copy(), self.weights[s:e].copy()

    # ---------------------------------------------------------------- cold start
    def cold_batch(
        self,
        history_items: Sequence[int],
        history_times: Sequence[float] | None = None,
        features: Mapping[str, Any] | None = None,
        friends: Sequence[int] | None = None,
        time: float | None = None,
    ) -> Batch:
        """One row for a user the model has never seen.

        Args:
            history_items: item codes the user interacted with (oldest first unless times say).
            history_times: their unix times, or ``None`` (then they count as happening at
                ``time``).
            features: raw user feature values by name (unknown values encode as missing).
            friends: codes of known users who are the new user's friends.
            time: request time in unix seconds, or ``None`` (unknown).

        Returns:
            A one-row :class:`Batch` whose ``users`` is ``n_users`` (unknown).

        Raises:
            DataError: for an item or friend code out of range, or an unknown feature name.
        """
        items = np.asarray(list(history_items), dtype=np.int64).reshape(-1)
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            raise DataError(f"history item codes must lie in 0..{self.n_items - 1}", field="history")
        if history_times is not None:
            ts = np.asarray(list(history_times), dtype=np.float64).reshape(-1)
            if ts.shape != items.shape:
                raise DataError("history_times must have one time per history item", field="history_times")
            order = np.argsort(ts, kind="stable")
            items, ts = items[order], ts[order]
        else:  # unknown event times count as "at the request time" (or 0 without one)
            ts = np.full(len(items), 0.0 if time is None else float(time))
        L = self.max_len
        items, ts = items[-L:], ts[-L:]
        pad = L - len(items)
        hist_items = np.concatenate([np.full(pad, self.n_items, np.int64), items])[None]
        hist_times = np.concatenate([np.zeros(pad), ts])[None]
        hist_w = np.concatenate([np.zeros(pad), np.ones(len(items))])[None]
        fr = np.asarray(list(friends or []), dtype=np.int64).reshape(-1)
        if len(fr) and (fr.min() < 0 or fr.max() >= self.n_users):
            raise DataError(f"friend codes must lie in 0..{self.n_users - 1}", field="friends")
        fr = np.unique(fr)
        # as in training (:meth:`_friend_table`, links of equal weight): the most recently
        # active friends first (the busiest without time), then by code
        fr = fr[np.lexsort((fr, -self._activity()[fr]))][: self.max_friends]
        fr_row = np.concatenate([fr, np.full(self.max_friends - len(fr), self.n_users, np.int64)])[None]
        cat, num, bag, bag_w = self._cold_features(features or {})
        t = np.array([np.nan if time is None else float(time)])
        return self._assemble(np.array([self.n_users]), cat, num, bag, bag_w, hist_items,
                              hist_times, hist_w, fr_row, t)

    def _cold_features(self, features: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        ua = self.user_arrays
        if self.user_encoder is None:
            if features:
                raise DataError("the model was trained without user features", field=next(iter(features)))
            return (np.zeros((1, ua.cat.shape[1]), np.int64), np.zeros((1, ua.num.shape[1]), np.float32),
                    np.zeros((1, 1), np.int64), np.zeros((1, 1), np.float32))
        kinds = self.user_encoder.kinds
        for name in features:
            if name not in kinds:
                raise DataError(f"unknown user feature (known: {', '.join(kinds)})", field=name)
        empty = {"categorical": None, "text": None, "numeric": math.nan, "multi": ()}
        row = {}
        for name, kind in kinds.items():
            v = features.get(name, empty[kind])
            if kind == "multi" and isinstance(v, (list, str)):
                v = (v,) if isinstance(v, str) else tuple(str(x) for x in v)
            if kind == "numeric":
                try:
                    v = math.nan if v is None else float(v)
                except (TypeError, ValueError):
                    raise DataError(f"not a number: {v!r}", field=name) from None
            row[name] = [v]
        frame = pd.DataFrame({k: pd.Series(v, dtype=object if kinds[k] != "numeric" else float)
                              for k, v in row.items()})
        enc = self.user_encoder.transform(FeatureTable(frame, dict(kinds)))
        fa = feature_arrays(enc, 1, self.max_tokens)
        return fa.cat, fa.num, fa.bag_idx, fa.bag_w

    # ---------------------------------------------------------------- persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A JSON-ready dict and named numpy arrays that :meth:`from_state` rebuilds from."""
        ua = self.user_arrays
        state = {
            "n_users": self.n_users, "n_items": self.n_items, "max_len": self.max_len,
            "max_friends": self.max_friends, "friend_len": self.friend_len,
            "has_time": self.has_time, "t_min": self.t_min, "t_max": self.t_max,
            "max_tokens": self.max_tokens, "cardinalities": ua.cardinalities,
            "n_bag_tokens": ua.n_bag_tokens,
            "user_encoder": self.user_encoder.to_state() if self.user_encoder else None,
        }
        arrays = {"indptr": self.indptr, "items": self.items, "times": self.times,
                  "weights": self.weights, "friends": self.friends, "user_cat": ua.cat,
                  "user_num": ua.num, "user_bag_idx": ua.bag_idx, "user_bag_w": ua.bag_w,
                  "trained": self.trained.astype(np.uint8)}
        return state, arrays

    @classmethod
    def from_state(cls, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ContextBuilder:
        """Rebuild from :meth:`to_state` output (no pickle)."""
        self = cls.__new__(cls)
        self.n_users, self.n_items = int(state["n_users"]), int(state["n_items"])
        self.max_len, self.max_friends = int(state["max_len"]), int(state["max_friends"])
        self.friend_len, self.max_tokens = int(state["friend_len"]), int(state["max_tokens"])
        self.has_time = bool(state["has_time"])
        self.t_min, self.t_max = float(state["t_min"]), float(state["t_max"])
        enc = state.get("user_encoder")
        self.user_encoder = FeatureEncoder.from_state(enc) if enc else None
        a = {k: np.asarray(v) for k, v in arrays.items()}
        self.indptr, self.items = a["indptr"].astype(np.int64), a["items"].astype(np.int64)
        self.times, self.weights = a["times"].astype(np.int64), a["weights"].astype(np.float32)
        self.friends = a["friends"].astype(np.int64)
        # models saved before the flag: every user with a saved event was trained
        self.trained = a["trained"].astype(bool) if "trained" in a else np.diff(self.indptr) > 0
        self.user_arrays = FeatureArrays(a["user_cat"].astype(np.int64), a["user_num"].astype(np.float32),
                                         a["user_bag_idx"].astype(np.int64), a["user_bag_w"].astype(np.float32),
                                         [int(c) for c in state["cardinalities"]], int(state["n_bag_tokens"]))
        if (self.indptr.shape != (self.n_users + 1,) or self.friends.shape != (self.n_users, self.max_friends)
                or self.trained.shape != (self.n_users,)):
            raise ValueError("context arrays do not match the saved sizes")
        return self


def _gather(values: np.ndarray, pos: np.ndarray, valid: np.ndarray, fill: float) -> np.ndarray:
    """``values[pos]`` where ``valid``, else ``fill`` (also when ``values`` is empty)."""
    if values.size == 0:
        return np.full(pos.shape, fill, dtype=values.dtype)
    return np.where(valid, values[np.where(valid, pos, 0)], fill).astype(values.dtype, copy=False)


def _count_before(times: np.ndarray, start: np.ndarray, end: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per element, how many of ``times[start:end]`` (sorted) are strictly below ``t``.

    A vectorised binary search over all segments at once (``log2(max length)`` rounds).
    """
    lo, hi = start.copy(), end.copy()
    if times.size == 0:
        return np.zeros_like(start)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        below = times[np.minimum(mid, len(times) - 1)] < t
        lo = np.where(active & below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
    return lo - start
