"""``mgr``: the multi-granularity recommender, ``P(v | u, c) = softmax_v(q_v . p_{u,c})``.

The facade around :class:`~mgrec.model.MGRNet`: it encodes features, builds the per-user
context (:class:`~mgrec.batching.ContextBuilder`), trains with early stopping on validation
NDCG@10, scores, explains (:meth:`MGR.explain`), and serves users and items the model has
never seen (:meth:`MGR.recommend_context`, :meth:`MGR.add_items`).

Training examples are the training interactions themselves. With ``behavior_mode="sequence"``
the context of an event is the user's events strictly before it (time order) and friends'
events before them, at the request time scoring uses (the previous event + 1 s); one
transformer pass per window of events serves a block of targets. With ``"set"`` it is the
user's other training events (the target left out). ``"auto"`` picks ``sequence`` when the
data has time and the split is time-ordered (``split_protocol`` ``loo``/``temporal``, else
inferred from the validation times).

All randomness (initialisation, shuffling, negatives, dropout, id dropout) comes from
``torch.Generator`` objects seeded with ``seed``; the global generators are never touched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from mgrec.baselines import check_fitted, check_users
from mgrec.batching import ContextBuilder
from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset
from mgrec.data.features import EncodedFeatures, FeatureEncoder, encode_features
from mgrec.data.shards import UserShard
from mgrec.encoders import set_generator
from mgrec.errors import ConfigError
from mgrec.feature_arrays import ItemArrays, build_item_arrays
from mgrec.item_item import ItemItemPart
from mgrec.losses import bpr_loss, dot_softmax_loss, sampled_softmax_loss
from mgrec.mgr_build import build_net, net_spec
from mgrec.mgr_config import (
    MGRConfig,
    resolve_behavior_mode,
    resolve_cold_dropout,
    resolve_granularities,
    resolve_loss_precision,
)
from mgrec.mgr_parts import PartsMixin
from mgrec.mgr_serving import ServingMixin
from mgrec.mgr_shards import ShardsMixin, whole_context
from mgrec.optim import make_optimizer, sparse_parameters
from mgrec.profile_prior import ProfilePrior
from mgrec.recommender import Recommender
from mgrec.social_items import SocialItemsPart
from mgrec.training import EarlyStopping, fit_epochs, pack_steps, torch_threads

__all__ = ["MGR", "MGRConfig"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
#: Users scored per forward pass in :meth:`MGR.score`.
SCORE_CHUNK = 1024


class MGR(PartsMixin, ShardsMixin, ServingMixin, Recommender):
    """The fused multi-granularity recommender.

    Args:
        config: a dict for :class:`MGRConfig`.
        seed: seeds initialisation, shuffling, negative sampling and dropout.

    Attributes:
        granularities_: the fused granularities after fitting.
        behavior_mode_: ``sequence`` or ``set``.
        history_: one dict per epoch (``epoch``, ``loss``, ``seconds``, ``valid``).
        best_epoch_: the epoch whose weights the model holds.
        best_valid_: its validation NDCG@10.
    """

    cold_users_get_popularity = False  # features and friends rank users without history


    name = "mgr"

    def __init__(self, config: dict[str, Any] | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = from_dict(MGRConfig, config, where="mgr config")
        self.seed = int(seed)
        self.net_: torch.nn.Module | None = None
        self.context_: ContextBuilder | None = None
        self.items_: ItemArrays | None = None
        self.item_encoder_: FeatureEncoder | None = None
        self.spec_: dict[str, Any] = {}
        self.granularities_: list[str] = []
        self.behavior_mode_: str = ""
        self.history_: list[dict[str, float]] = []
        self.best_epoch_, self.best_valid_ = 0, float("nan")
        self.item_item_: ItemItemPart | None = None
        self.item_item_valid_: dict[str, float] = {}
        self.item_item_reg_: float | None = None
        self.cold_dropout_ = 0.0
        self.loss_precision_ = "float32"
        self.prior_: ProfilePrior | None = None
        self.social_items_: SocialItemsPart | None = None
        self.social_items_valid_: dict[str, float] = {}
        self._shard: UserShard | None = None  # set while fitting on a data-parallel rank's shard
        self._init_serving()
        self._reset_vector_cache()

    # ------------------------------------------------------------------ training
    def _fit(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        """Fit on ``train``. When ``dataset.shard`` is set (one data-parallel rank's view, from
        :func:`mgrec.data.shards.load_shard`), ``train`` holds the rank's users' events and their
        friends'; the rank trains on its own users' events, and statistics over every event
        are combined across ranks. The post-training parts need the whole split: rank 0 fits
        them afterwards in :meth:`finish_shards`."""
        cfg = self.config
        self._reset_vector_cache()
        self._shard = shard = dataset.shard
        reduce, own, whole = None, train, None
        if shard is not None:
            from mgrec.distributed import current

            dctx = current()
            if (dctx.rank, dctx.world_size) != (shard.rank, shard.world_size):
                raise ConfigError(f"mgr: the data is shard {shard.rank} of {shard.world_size}, but this process is "
                                  f"rank {dctx.rank} of {dctx.world_size}")
            reduce, own = dctx.reduce_array, train[shard.owns(train["user"].to_numpy())]
            whole = whole_context(dataset, train, own, reduce)
        self.granularities_ = resolve_granularities(cfg, dataset)
        self.behavior_mode_ = resolve_behavior_mode(cfg, dataset, train, valid)
        self.cold_dropout_ = resolve_cold_dropout(cfg, dataset.n_users, own,
                                                  n_trained=None if whole is None else int(whole["trained"].sum()))
        uf, itf = self._encoded_features(dataset)
        self.context_ = ContextBuilder(dataset, train, max_len=cfg.max_len, max_friends=cfg.max_friends,
                                       friend_len=cfg.friend_len, user_features=uf, whole=whole)
        with_time = "time" in self.granularities_
        self.items_ = build_item_arrays(itf, own, dataset.n_items, with_time=with_time, reduce=reduce)
        self.item_encoder_ = itf.encoder if itf is not None else None
        self.spec_ = net_spec(cfg, self.granularities_, self.behavior_mode_, self.context_, self.items_)
        self._set_ids(dataset.users.ids, dataset.items.ids)
        self.base_items_ = dataset.n_items
        self._extra_vectors = None
        self.item_item_, self.item_item_valid_, self.item_item_reg_ = None, {}, None
        self.social_items_, self.social_items_valid_, self.prior_ = None, {}, None
        with torch_threads(cfg.threads):
            self.net_ = build_net(self.spec_, self.context_, self.items_, seed=self.seed)
            self._train(own, valid)
            if shard is None:
                self._fit_post_training(valid)
        logger.info("mgr: granularities %s, %s mode, best epoch %d (valid ndcg@10 %.4f)",
                    self.granularities_, self.behavior_mode_, self.best_epoch_, self.best_valid_)

    def _encoded_features(self, dataset: Dataset) -> tuple[EncodedFeatures | None, EncodedFeatures | None]:
        """The user and item features the fitted granularities read, encoded."""
        cfg = self.config
        uf = _encode(dataset.user_features, cfg.feature_min_count) if "user" in self.granularities_ else None
        itf = _encode(dataset.item_features, cfg.feature_min_count) if "item" in self.granularities_ else None
        return uf, itf

    def _fit_post_training(self, valid: pd.DataFrame | None) -> None:
        self._fit_item_item(valid)
        self._fit_social_items(valid)
        self._fit_prior()

    def _train(self, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        """Train ``net_`` with early stopping, on :func:`mgrec.distributed.current`'s device.

        Under torchrun each rank trains on its shard of every epoch and gradients are averaged
        across ranks (:mod:`mgrec.distributed`); ``batch_size`` stays the global batch. With a
        :func:`mgrec.checkpoint.active_plan`, rank 0 writes checkpoints and ``resume`` continues
        from the latest one (weights, optimizer, generators, early-stopping state). The network
        ends on the CPU, where scoring runs.
        """
        from mgrec.checkpoint import active_plan, checkpoint_hook, data_checksum, fingerprint, resume_training
        from mgrec.distributed import current

        cfg, net, ctx = self.config, self.net_, self.context_
        assert net is not None and ctx is not None
        dctx = current()
        device = dctx.device
        # training noise: one stream per rank (a single process keeps its seed + 1 stream)
        gen = torch.Generator(device=device).manual_seed(self.seed + 1 + 1_000_003 * dctx.rank)
        # the epoch order: the same stream on every rank, each takes its shard
        order = torch.Generator().manual_seed(self.seed + 1 + 0x5EED) if dctx.enabled else gen
        set_generator(net, gen)
        examples = ctx.examples()
        counts = np.bincount(train["item"].to_numpy(np.int64), minlength=ctx.n_items)
        n_examples = len(examples[0])
        if self._shard is not None:  # own users' events only; popularity over every rank's
            order = gen  # each rank orders its own examples (its noise stream, saved per rank)
            own = self._shard.owns(examples[0])
            examples = tuple(a[own] for a in examples)
            counts = dctx.reduce_array(counts, "sum")
            n_examples = int(dctx.reduce_array(np.array([len(examples[0])], np.int64), "min")[0])
            if n_examples == 0 and counts.sum() > 0:
                raise ConfigError(f"mgr: a rank of {dctx.world_size} has no training events; use fewer processes")
        counts = counts + 1.0
        log_q = torch.from_numpy(np.log(counts / counts.sum()).astype(np.float32))
        if n_examples == 0:
            logger.warning("mgr: no training interactions; the model keeps its initial weights")
            return
        net.to(device)
        log_q = dctx.place(log_q)
        dctx.broadcast_module(net)  # identical replicas to start with (as DDP does)
        if dctx.enabled and sparse_parameters(net):
            raise ConfigError("mgr: sparse id tables cannot train distributed; set sparse_ids 'off'")
        opt = make_optimizer(net, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.loss_precision_ = resolve_loss_precision(cfg, device)
        stopping = EarlyStopping(cfg.epochs, cfg.eval_every, cfg.patience, cfg.progress)
        plan = active_plan()
        run: dict[str, Any] = {}
        if plan is not None:  # what a checkpoint must match to be resumed
            run = fingerprint(model=self.name, seed=self.seed, world_size=dctx.world_size, device=device.type,
                              config={k: v for k, v in to_dict(cfg).items() if k not in ("progress", "threads")},
                              spec=self.spec_, data=self._data_checksum(data_checksum(*examples, counts)))
        shared = None if order is gen else order  # a separate epoch-order stream (several ranks)
        state = None if plan is None else resume_training(plan, dctx, net=net, optimizer=opt, noise=gen,
                                                          order=shared, run=run)
        hist = fit_epochs(
            dctx.in_device_scope(lambda epoch: self._epoch(examples, opt, gen, log_q, order)),
            stopping=stopping,
            validate=self._validation(valid, net),
            snapshot=lambda: {k: v.detach().clone() for k, v in net.state_dict().items()},
            restore=net.load_state_dict,
            name="mgr",
            state=state,
            on_epoch_end=None if plan is None else checkpoint_hook(plan, dctx, net=net, optimizer=opt, noise=gen,
                                                                   order=shared, run=run),
        )
        dctx.check_replicas(net)
        set_generator(net, None)
        net.to("cpu")
        net.eval()
        self.history_, self.best_epoch_, self.best_valid_ = hist.epochs, hist.best_epoch, hist.best_valid

    def _epoch(self, examples: tuple[np.ndarray, ...], opt: torch.optim.Optimizer,
               gen: torch.Generator, log_q: torch.Tensor, order: torch.Generator | None = None) -> float:
        """One epoch over this rank's shard of the examples (``order`` draws the epoch order;
        default ``gen``); returns the mean loss over every rank's examples."""
        if self.behavior_mode_ == "sequence" and "behavior" in self.granularities_:
            return self._epoch_windows(opt, gen, log_q, order)
        from mgrec.distributed import current

        cfg, net, ctx, dctx = self.config, self.net_, self.context_, current()
        assert net is not None and ctx is not None
        users, pos, items, times = examples
        net.train()
        order = gen if order is None else order
        perm = torch.randperm(len(users), generator=order, device=order.device).cpu().numpy()
        if self._shard is None:
            perm = dctx.shard(perm)
        params = [p for group in opt.param_groups for p in group["params"]]
        size = dctx.local_batch(cfg.batch_size)  # batch_size is the global batch
        sequence = self.behavior_mode_ == "sequence"
        total = 0.0
        steps = [perm[start:start + size] for start in range(0, len(perm), size)]
        if self._shard is not None:  # own examples; as many steps as the busiest rank
            steps = dctx.same_steps(steps)
        for idx in steps:
            # set mode: the request time is the serving one (the user's last training event
            # + 1 s), not the target's own time, which would leak the target into the time
            # granularity (and friends' windows) and never be available when scoring
            batch = ctx.batch(users[idx], times=times[idx] if sequence else None,
                              cutoff=pos[idx] if sequence else None, exclude=None if sequence else pos[idx])
            with net.item_tower.shared_content():  # encode the catalogue's content once per step
                loss = self._loss(dctx.place(batch), dctx.place(torch.from_numpy(items[idx])), gen, log_q)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dctx.average_gradients(params)
            opt.step()
            total += float(loss.detach()) * len(idx)
        return dctx.mean(total, sum(len(idx) for idx in steps))

    def _epoch_windows(self, opt: torch.optim.Optimizer, gen: torch.Generator, log_q: torch.Tensor,
                       order: torch.Generator | None = None) -> float:
        """Sequence mode: one transformer pass per window of events serves every target in
        its block (:meth:`ContextBuilder.windows`); the other granularities are encoded per
        target from the events before it, at the request time scoring uses. A step takes
        blocks until it holds ``batch_size`` targets (:func:`~mgrec.training.pack_steps`);
        with several ranks, each takes its share of the step's blocks."""
        from mgrec.distributed import current

        cfg, net, ctx, dctx = self.config, self.net_, self.context_, current()
        assert net is not None and ctx is not None
        stride = cfg.window_stride or max(1, ctx.max_len // 2)
        users, first, end = ctx.windows(stride)
        if self._shard is not None:  # the blocks of the rank's own users
            own = self._shard.owns(users)
            users, first, end = users[own], first[own], end[own]
        net.train()
        order = gen if order is None else order
        perm = torch.randperm(len(users), generator=order, device=order.device).cpu().numpy()
        params = [p for group in opt.param_groups for p in group["params"]]
        behavior = net.encoders["behavior"]
        total, seen = 0.0, 0
        # steps of batch_size targets (blocks hold up to max_len); each rank takes its share
        # of every step's blocks, so all ranks run the same number of steps
        if self._shard is None:
            steps = [dctx.shard(step) for step in pack_steps(perm, end - first, cfg.batch_size)]
        else:  # own blocks in steps of the local batch; as many steps as the busiest rank
            steps = dctx.same_steps(pack_steps(perm, end - first, dctx.local_batch(cfg.batch_size)))
        for w in steps:
            u, a, c = users[w], first[w], end[w]
            n_t = c - a
            row = np.repeat(np.arange(len(w)), n_t)
            t = a[row] + np.arange(len(row)) - np.repeat(np.cumsum(n_t) - n_t, n_t)
            # the column of event t - 1 among the window's last `stride` states (a block's
            # targets read only those, so only those are computed in the last block)
            col = stride - c[row] + t
            target = dctx.place(torch.from_numpy(ctx.items[ctx.indptr[u[row]] + t]))
            # drawn first: a step trained as new users reads no history, so its windows are
            # not encoded at all
            cold = self._cold_step(gen)
            with net.item_tower.shared_content():
                given = None
                if not cold:
                    states = behavior.states(dctx.place(ctx.batch(u, cutoff=c - 1)), last=stride)
                    vec = states[dctx.place(torch.from_numpy(row)), dctx.place(torch.from_numpy(col))]
                    given = {"behavior": (vec, torch.ones(len(row), dtype=torch.bool, device=vec.device))}
                    if "item" in net.encoders:  # the content taste over the same histories
                        given["item"] = self._window_tastes(u, a, c, row, t)
                # the request time of scoring (the previous event + 1 s), not the target's own
                # time: scoring never knows when the next event will happen
                prev = ctx.times[ctx.indptr[u[row]] + t - 1].astype(np.float64) + 1.0
                # the other granularities read at most the latest event of the history
                batch = ctx.batch(u[row], cutoff=t, times=prev if ctx.has_time else None, history=1)
                loss = self._loss(dctx.place(batch), target, gen, log_q, given=given, cold=cold)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dctx.average_gradients(params)
            opt.step()
            total += float(loss.detach()) * len(row)
            seen += len(row)
        return dctx.mean(total, seen)

    def _window_tastes(self, u: np.ndarray, a: np.ndarray, c: np.ndarray, row: np.ndarray,
                       t: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``item`` granularity of every target of blocks ``[a, c)`` of users ``u`` (target
        ``t`` of block ``row``): the content taste of the ``max_len`` events before ``t``, the
        history :meth:`ContextBuilder.batch` gives at cutoff ``t``, gathered flat for one
        sparse product (:meth:`ItemContentEncoder.history_tastes`)."""
        ctx, net = self.context_, self.net_
        assert ctx is not None and net is not None
        start = np.maximum(0, t - ctx.max_len)
        n = t - start  # events per history
        indptr = np.zeros(len(t) + 1, dtype=np.int64)
        np.cumsum(n, out=indptr[1:])
        flat = np.repeat(ctx.indptr[u[row]] + start - indptr[:-1], n) + np.arange(indptr[-1])
        return net.encoders["item"].history_tastes(ctx.items[flat], ctx.weights[flat], indptr)

    def _cold_step(self, gen: torch.Generator) -> bool:
        """Whether a training step encodes its rows as new users (probability ``cold_dropout``)."""
        return self.cold_dropout_ > 0 and float(torch.rand(1, generator=gen)) < self.cold_dropout_

    def _loss(self, batch: Any, target: torch.Tensor, gen: torch.Generator, log_q: torch.Tensor,
              given: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
              cold: bool | None = None) -> torch.Tensor:
        """The step's loss; ``cold``: train the rows as new users (``None``: draw it here)."""
        cfg, net = self.config, self.net_
        assert net is not None
        drop: frozenset[str] = frozenset()
        if self._cold_step(gen) if cold is None else cold:
            # train this batch as new users: no history and no id, only profile, friends, time.
            # The history is emptied, not only left unencoded: the time granularity reads the
            # gap since the last event from it, which a new user's request does not have
            drop = frozenset({"behavior", "item"})
            assert self.context_ is not None
            batch = dataclasses.replace(
                batch, users=torch.full_like(batch.users, self.context_.n_users),
                hist_items=torch.full_like(batch.hist_items, self.context_.n_items),
                hist_times=torch.zeros_like(batch.hist_times), hist_weights=torch.zeros_like(batch.hist_weights))
        loss = self.loss_
        if loss == "softmax":
            p = net.user_vectors(batch, drop=drop, given=given)[0]
            return dot_softmax_loss(p, net.item_vectors(generator=gen), target,
                                    matmul_dtype=getattr(torch, self.loss_precision_))
        n_items = log_q.shape[0]
        if loss == "sampled_softmax":
            neg = torch.multinomial(log_q.exp(), cfg.n_negatives, replacement=True, generator=gen)
            wanted = torch.cat([target, neg])
        else:
            neg = torch.randint(n_items, (len(target), cfg.n_negatives), generator=gen)
            wanted = torch.cat([target.unsqueeze(1), neg], dim=1)
        # only the items this step touches are encoded, not the whole catalogue
        touched = torch.cat([wanted.reshape(-1), batch.hist_items.reshape(-1), batch.friend_items.reshape(-1)])
        with net.item_tower.shared_content(items=touched):
            p = net.user_vectors(batch, drop=drop, given=given)[0]
            q = net.item_tower(wanted, generator=gen)
        if loss == "sampled_softmax":
            pos_s = (p * q[: len(target)]).sum(-1)
            neg_s = p @ q[len(target):].T
            return sampled_softmax_loss(pos_s, neg_s, pos_log_q=log_q[target], neg_log_q=log_q[neg],
                                        accidental=neg.unsqueeze(0) == target.unsqueeze(1))
        scores = (p.unsqueeze(1) * q).sum(-1)
        return bpr_loss(scores[:, 0], scores[:, 1:], mask=neg != target.unsqueeze(1))

    def fit_info(self) -> dict[str, Any]:
        """What training chose: the best epoch, its validation NDCG@10, the item-item part's
        validation score per relative scale and the scale kept (``None``: off)."""
        return {"best_epoch": self.best_epoch_,
                "best_valid": None if math.isnan(self.best_valid_) else round(self.best_valid_, 6),
                "item_item_valid": {k: round(v, 6) for k, v in self.item_item_valid_.items()},
                "item_item_scale": None if self.item_item_ is None else self.item_item_.scale,
                "item_item_reg": self.item_item_reg_, "cold_dropout": self.cold_dropout_,
                "loss": self.loss_, "loss_precision": self.loss_precision_,
                "sparse_ids": bool(self.spec_.get("sparse_ids", False)),
                "profile_prior": None if self.prior_ is None else dict(self.prior_.info),
                "social_items_scale": None if self.social_items_ is None else self.social_items_.scale,
                "social_items_valid": {k: round(v, 6) for k, v in self.social_items_valid_.items()}}

    @property
    def loss_(self) -> str:
        """The loss trained with (``loss: auto`` resolved; older states: the configured one)."""
        return str(self.spec_.get("loss", self.config.loss))

    # ------------------------------------------------------------------ scoring
    def score(self, users: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` ``float32`` scores ``q_v . p_{u,c}`` in the training context
        (request time: the user's last training event + 1 s); users with no history and no
        friends get the profile prior's scores when the model has one."""
        check_fitted(self.net_ is not None, self.name)
        assert self.net_ is not None and self.context_ is not None
        users = check_users(users, self.context_.n_users)
        out = np.empty((len(users), self.n_items_), dtype=np.float32)
        with torch.no_grad():
            self.net_.eval()
            with self.net_.item_tower.shared_content():
                q = self._item_matrix()
                for s in range(0, len(users), SCORE_CHUNK):
                    batch = self.context_.batch(users[s:s + SCORE_CHUNK])
                    p = self.net_.user_vectors(batch)[0]
                    out[s:s + SCORE_CHUNK] = (p @ q.T).numpy()
                    linear = self._item_item_scores(users[s:s + SCORE_CHUNK])
                    if linear is not None:
                        out[s:s + SCORE_CHUNK] += linear
                    if self.social_items_ is not None:
                        out[s:s + SCORE_CHUNK] += self._social_scores(batch)
        prior = self._prior_users(users)
        if prior.any():
            out[prior] = self._prior_scores(users[prior])
        return out

    # -------------------------------------------------------------- persistence
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        check_fitted(self.net_ is not None, self.name)
        assert self.net_ is not None and self.context_ is not None and self.items_ is not None
        ctx_state, ctx_arrays = self.context_.to_state()
        meta = {
            "version": _STATE_VERSION, "seed": self.seed, "best_epoch": self.best_epoch_,
            "best_valid": None if math.isnan(self.best_valid_) else self.best_valid_,
            "epochs_run": len(self.history_), "granularities": self.granularities_,
            "behavior_mode": self.behavior_mode_, "spec": self.spec_, "context": ctx_state,
            "item_item_scale": None if self.item_item_ is None else self.item_item_.scale,
            "item_item_valid": self.item_item_valid_, "item_item_reg": self.item_item_reg_,
            "cold_dropout": self.cold_dropout_, "loss_precision": self.loss_precision_,
            "profile_prior": None,
            "social_items_scale": None if self.social_items_ is None else self.social_items_.scale,
            "social_items_valid": self.social_items_valid_,
            "item_encoder": self.item_encoder_.to_state() if self.item_encoder_ else None,
            **self._serving_meta(),
        }
        arrays = {f"net/{k}": v.detach().cpu().numpy().copy() for k, v in self.net_.state_dict().items()}
        arrays.update({f"ctx/{k}": v for k, v in ctx_arrays.items()})
        arrays.update(self._serving_arrays())
        if self.prior_ is not None:
            meta["profile_prior"], prior_arrays = self.prior_.to_state()
            arrays.update({f"prior/{k}": v for k, v in prior_arrays.items()})
        if self.item_item_ is not None:
            arrays.update({"item_item/left": self.item_item_.left, "item_item/right": self.item_item_.right})
        f = self.items_.features
        arrays.update({"items/cat": f.cat, "items/num": f.num, "items/bag_idx": f.bag_idx,
                       "items/bag_w": f.bag_w, "items/time": self.items_.time_feats,
                       "items/time_mean": self.items_.time_mean, "items/time_std": self.items_.time_std})
        arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8).copy()
        return to_dict(self.config), arrays

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from mgrec.feature_arrays import FeatureArrays

        self.config = from_dict(MGRConfig, config, where="mgr config")
        meta = json.loads(bytes(np.asarray(arrays["meta_json"], dtype=np.uint8)).decode("utf-8"))
        if meta.get("version") != _STATE_VERSION:
            raise ValueError(f"mgr state version {meta.get('version')} is not {_STATE_VERSION}")
        self.seed, self.best_epoch_ = int(meta["seed"]), int(meta["best_epoch"])
        self.best_valid_ = float("nan") if meta["best_valid"] is None else float(meta["best_valid"])
        self.granularities_, self.behavior_mode_ = list(meta["granularities"]), str(meta["behavior_mode"])
        self.spec_, self.history_ = dict(meta["spec"]), []
        ctx_arrays = {k[4:]: v for k, v in arrays.items() if k.startswith("ctx/")}
        self.context_ = ContextBuilder.from_state(meta["context"], ctx_arrays)
        enc = meta.get("item_encoder")
        self.item_encoder_ = FeatureEncoder.from_state(enc) if enc else None
        s = self.spec_["item"]
        feats = FeatureArrays(arrays["items/cat"], arrays["items/num"], arrays["items/bag_idx"],
                              arrays["items/bag_w"], list(s["cardinalities"]), int(s["n_bag_tokens"]) + 1)
        self.items_ = ItemArrays(feats, arrays["items/time"], arrays["items/time_mean"], arrays["items/time_std"])
        self.net_ = build_net(self.spec_, self.context_, self.items_, seed=self.seed)
        state = {k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net/")}
        self.net_.load_state_dict(state, strict=True)
        self.net_.eval()
        scale = meta.get("item_item_scale")
        self.item_item_valid_ = dict(meta.get("item_item_valid") or {})
        self.item_item_reg_ = meta.get("item_item_reg")
        self.cold_dropout_ = float(meta.get("cold_dropout", 0.0))
        self.loss_precision_ = str(meta.get("loss_precision", "float32"))  # older files: float32
        social = meta.get("social_items_scale")
        self.social_items_ = None if social is None else SocialItemsPart(float(social))
        self.social_items_valid_ = dict(meta.get("social_items_valid") or {})
        prior = meta.get("profile_prior")
        self.prior_ = None if prior is None else ProfilePrior.from_state(
            prior, {k[6:]: v for k, v in arrays.items() if k.startswith("prior/")})
        self.item_item_ = None if scale is None else ItemItemPart(
            np.array(arrays["item_item/left"], dtype=np.float32), np.array(arrays["item_item/right"], dtype=np.float32),
            float(scale))
        self._reset_vector_cache()
        self._load_serving(meta, arrays)


def _encode(table: Any, min_count: int = 1) -> EncodedFeatures | None:
    return encode_features(table, min_count=min_count) if table is not None and table.names else None
