"""Fitting ``mgr`` on one data-parallel rank's shard of the data (:mod:`mgrec.data.shards`).

Under ``torchrun ... mgrec train --shards DIR`` each rank holds its own users' training events
and those of the friends the model reads for them. :class:`ShardsMixin` holds what
:class:`~mgrec.mgr.MGR` does differently then: the early-stopping score adds up each rank's
validation sums, the resume checksum covers every rank's examples, and rank 0 completes the
model with the whole split (:meth:`ShardsMixin.finish_shards`). :func:`whole_context` combines
what the context builder needs from every rank's events.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from mgrec.baselines import check_fitted
from mgrec.batching import ContextBuilder
from mgrec.data.dataset import Dataset, to_csr, user_activity
from mgrec.errors import ConfigError
from mgrec.feature_arrays import Reduce, build_item_arrays
from mgrec.training import torch_threads, validation_scorer

__all__ = ["ShardsMixin", "whole_context"]


class ShardsMixin:
    """The sharded-fit parts of :class:`~mgrec.mgr.MGR` (see the module docstring)."""

    _shard: Any
    net_: Any
    items_: Any
    spec_: dict[str, Any]
    config: Any
    granularities_: list[str]
    name: str

    def finish_shards(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> ShardsMixin:
        """Complete a model fitted on shards, on rank 0, with the whole split (``dataset.shard``
        ``None``): the context then holds every user's history, which scoring and serving read,
        and the post-training parts are fitted on every validation user.

        Raises:
            RuntimeError: the whole split gives item statistics or a time span other than the
                ones the ranks combined (the shards and the split disagree).
        """
        check_fitted(self.net_ is not None, self.name)
        if self._shard is None:
            raise ConfigError("finish_shards: this model was not fitted on shards")
        if dataset.shard is not None:
            raise ConfigError("finish_shards needs the whole split (load_shard with world_size 1)")
        cfg, spec = self.config, self.spec_
        self.n_users_, self.n_items_ = dataset.n_users, dataset.n_items
        self.seen_ = to_csr(train, dataset.n_users, dataset.n_items)
        self._pop_cache = None
        uf, itf = self._encoded_features(dataset)
        ctx = ContextBuilder(dataset, train, max_len=cfg.max_len, max_friends=cfg.max_friends,
                             friend_len=cfg.friend_len, user_features=uf)
        items = build_item_arrays(itf, train, dataset.n_items, with_time="time" in self.granularities_)
        assert self.items_ is not None
        same = np.allclose(items.time_feats, self.items_.time_feats, rtol=1e-5, atol=1e-5) and all(
            (math.isnan(a) and math.isnan(b)) or a == b
            for a, b in ((ctx.t_min, spec["t_min"]), (ctx.t_max, spec["t_max"])))
        if not same:
            raise RuntimeError("finish_shards: the whole split's item statistics or time span differ from the "
                               "ones the ranks combined")
        self.context_, self._shard = ctx, None
        self._reset_vector_cache()
        with torch_threads(cfg.threads):
            self._fit_post_training(valid)
        return self

    def _data_checksum(self, local: str) -> str:
        """``local``, or on shards the checksum of every rank's, in rank order (the same on all)."""
        if self._shard is None:
            return local
        from mgrec.checkpoint import data_checksum
        from mgrec.distributed import current

        parts = current().gather_bytes(torch.frombuffer(bytearray(local.encode()), dtype=torch.uint8))
        return data_checksum(*(p.numpy() for p in parts))

    def _validation(self, valid: pd.DataFrame | None, net: torch.nn.Module) -> Any:
        """The early-stopping score: rank 0 ranks every validation user, or on shards each rank
        ranks its own and the per-user sums are added up."""
        from mgrec.distributed import current

        dctx = current()
        if self._shard is None:
            return dctx.scored_on_main(validation_scorer(self, valid, metric="ndcg@10"), net)
        n_valid = 0 if valid is None else len(valid)
        if int(dctx.reduce_array(np.array([n_valid], np.int64), "sum")[0]) == 0:
            return None
        local = validation_scorer(self, valid, metric="ndcg@10", totals=True)

        def shared() -> float:
            total, count = (0.0, 0.0)
            if local is not None:
                with dctx.on_cpu(net):
                    total, count = local()
            s, n = dctx.sum([total, count])
            return s / max(n, 1.0)

        return shared


def whole_context(dataset: Dataset, train: pd.DataFrame, own: pd.DataFrame, reduce: Reduce) -> dict[str, Any]:
    """What :class:`ContextBuilder` needs from every rank's events (its ``whole``): the users
    with training events, each user's activity and the time span. ``train`` is the rank's
    events (own and friends'), ``own`` its own users' share of them."""
    n = dataset.n_users
    has_time = dataset.has_time and "timestamp" in train.columns
    counts = reduce(np.bincount(own["user"].to_numpy(np.int64), minlength=n).astype(np.int64), "sum")
    activity = reduce(user_activity(train, n, has_time=has_time), "max")
    ts = train["timestamp"].to_numpy(np.float64) if has_time and len(train) else np.zeros(0)
    lo = float(reduce(np.array([ts.min() if len(ts) else np.inf]), "min")[0])
    hi = float(reduce(np.array([ts.max() if len(ts) else -np.inf]), "max")[0])
    t_range = (lo, hi) if has_time and math.isfinite(lo) else (math.nan, math.nan)
    return {"trained": counts > 0, "activity": activity, "t_range": t_range}
