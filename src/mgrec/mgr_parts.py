"""The parts of ``mgr`` fitted after the network, and how they join its scores.

:class:`PartsMixin` holds what :class:`~mgrec.mgr.MGR` fits once the network is trained, each
chosen or stopped on data the network did not decide on:

* the behaviour granularity's linear item-item part (:mod:`mgrec.item_item`), its EASE penalty
  and weight chosen on validation;
* the social granularity's friends' items part (:mod:`mgrec.social_items`), its weight chosen
  on validation;
* the profile prior (:mod:`mgrec.profile_prior`) for users with no history and no friends,
  stopped early on training users it left out.

It also says which users the parts make :meth:`~mgrec.recommender.Recommender.recommend`
score exactly rather than through an item index (``_has_cold``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mgrec.item_item import RELATIVE_SCALES, ItemItemPart, fit_item_item, scale_grid
from mgrec.mgr_config import SOFTMAX_MAX_ITEMS
from mgrec.profile_prior import ProfilePrior, fit_profile_prior
from mgrec.social_items import RELATIVE_SCALES as SOCIAL_SCALES
from mgrec.social_items import SocialItemsPart
from mgrec.training import validation_scorer

__all__ = ["ITEM_ITEM_MAX_ITEMS", "PartsMixin"]

logger = logging.getLogger("mgrec.mgr")

#: ``item_item="auto"`` fits the dense item-item part up to this many items.
ITEM_ITEM_MAX_ITEMS = 40_000


class PartsMixin:
    """Fitting and scoring of the post-training parts (module docstring); mixed into
    :class:`~mgrec.mgr.MGR`, whose fitted state it reads."""

    config: Any
    context_: Any
    seen_: Any
    seed: int
    n_users_: int
    n_items_: int
    granularities_: list[str]
    behavior_mode_: str
    best_valid_: float
    item_item_: ItemItemPart | None
    item_item_valid_: dict[str, float]
    item_item_reg_: float | None
    social_items_: SocialItemsPart | None
    social_items_valid_: dict[str, float]
    prior_: ProfilePrior | None
    score: Callable[[np.ndarray], np.ndarray]  # MGR.score

    def _fit_item_item(self, valid: pd.DataFrame | None) -> None:
        """Fit the linear item-item part for each configured penalty and choose the penalty and
        the scale on ``valid`` (see :mod:`mgrec.item_item`); the part is dropped when scale 0
        validates best. ``item_item_valid_`` maps ``"0"`` (off) and ``"<reg>/<relative scale>"``
        to the validation NDCG@10."""
        cfg = self.config
        auto = cfg.item_item == "auto" and self.behavior_mode_ == "set" and self.n_items_ <= ITEM_ITEM_MAX_ITEMS
        if not (cfg.item_item == "ease" or auto) or "behavior" not in self.granularities_:
            return
        assert self.seen_ is not None
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(self.n_users_, min(512, self.n_users_), replace=False))
        neural = self.score(sample)
        scorer = validation_scorer(self, valid, metric="ndcg@10")
        regs = cfg.item_item_regs
        if scorer is None:  # nothing to choose on: the first penalty at equal spreads
            part = fit_item_item(self.seen_, regs[0], cfg.item_item_rank)
            part.scale = scale_grid(neural, part.scores(self.seen_[sample], self.n_items_))[RELATIVE_SCALES.index(1.0)]
            self.item_item_, self.item_item_reg_ = (part, regs[0]) if part.scale > 0 else (None, None)
            return
        best, kept, kept_reg = scorer(), None, None  # scale 0: the network alone
        self.item_item_valid_["0"] = best
        for reg in regs:
            part = fit_item_item(self.seen_, reg, cfg.item_item_rank)
            scales = scale_grid(neural, part.scores(self.seen_[sample], self.n_items_))
            best_scale = 0.0
            for rel, scale in zip(RELATIVE_SCALES, scales, strict=True):
                if scale <= 0:
                    continue
                part.scale, self.item_item_ = scale, part
                score = scorer()
                self.item_item_valid_[f"{reg:g}/{rel:g}"] = score
                if score > best:
                    best, best_scale = score, scale
            if best_scale > 0:
                part.scale = best_scale
                kept, kept_reg = part, reg
            self.item_item_ = None
        self.item_item_, self.item_item_reg_ = kept, kept_reg
        if math.isfinite(best):
            self.best_valid_ = best
        logger.info("mgr: item-item part, penalty/relative scale -> valid ndcg@10 %s", self.item_item_valid_)

    def _fit_social_items(self, valid: pd.DataFrame | None) -> None:
        """Choose the weight of the friends' recent items (:mod:`mgrec.social_items`) on
        ``valid``; the part is dropped when weight 0 validates best. ``social_items_valid_``
        maps each relative weight to the validation NDCG@10."""
        if self.config.social_items != "auto" or "social" not in self.granularities_:
            return
        scorer = validation_scorer(self, valid, metric="ndcg@10")
        if scorer is None:
            return
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(self.n_users_, min(512, self.n_users_), replace=False))
        spread = float(self.score(sample).std(axis=1).mean())
        best, kept = -1.0, 0.0
        for rel in SOCIAL_SCALES:
            self.social_items_ = SocialItemsPart(rel * spread) if rel > 0 else None
            score = scorer()
            self.social_items_valid_[f"{rel:g}"] = score
            if score > best:
                best, kept = score, rel * spread
        self.social_items_ = SocialItemsPart(kept) if kept > 0 else None
        self.best_valid_ = best
        logger.info("mgr: friends' items part, relative weight -> valid ndcg@10 %s", self.social_items_valid_)

    def _fit_prior(self) -> None:
        """Fit the profile prior (:mod:`mgrec.profile_prior`) when ``profile_prior`` is
        ``auto``, the ``user`` granularity is fused, users have features and the catalogue is
        small enough for its full softmax."""
        cfg, ctx = self.config, self.context_
        self.prior_ = None
        if (cfg.profile_prior != "auto" or "user" not in self.granularities_ or ctx is None
                or ctx.user_encoder is None or self.seen_ is None or self.n_items_ > SOFTMAX_MAX_ITEMS):
            return
        users = np.flatnonzero(np.diff(self.seen_.indptr) > 0)
        self.prior_ = fit_profile_prior(ctx.user_arrays, self.seen_, users, dim=cfg.prior_dim,
                                        min_users=cfg.prior_min_users, seed=self.seed)

    def _prior_users(self, users: np.ndarray) -> np.ndarray:
        """``(B,)`` whether each known user is ranked by the profile prior: the model has one,
        and the user has no history and no friends in the current context."""
        ctx = self.context_
        if self.prior_ is None or ctx is None:
            return np.zeros(len(users), dtype=bool)
        empty = ctx.indptr[users + 1] == ctx.indptr[users]
        return empty & (ctx.friends[users] == ctx.n_users).all(axis=1)

    def _has_cold(self, users: np.ndarray) -> bool:
        """Users the profile prior ranks, and every user while the friends' items part is on,
        are scored exactly (:meth:`score`), not by the index."""
        if self.social_items_ is not None:
            return True
        ok = users[(users >= 0) & (users < (self.context_.n_users if self.context_ is not None else 0))]
        return bool(self._prior_users(ok).any())

    def _prior_scores(self, users: np.ndarray) -> np.ndarray:
        """``(B, n_items_)`` profile prior scores of known users."""
        assert self.prior_ is not None and self.context_ is not None
        ua = self.context_.user_arrays
        return self.prior_.scores(ua.cat[users], ua.bag_idx[users], ua.bag_w[users], self.n_items_)

    def _item_item_scores(self, users: np.ndarray) -> np.ndarray | None:
        if self.item_item_ is None or self.seen_ is None:
            return None
        return self.item_item_.scores(self.seen_[users], self.n_items_)

    def _social_scores(self, batch: Any) -> np.ndarray:
        """``(B, n_items_)`` the friends' items part for a batch's rows."""
        assert self.social_items_ is not None and self.context_ is not None
        return self.social_items_.scores(batch.friend_items.numpy(), self.context_.n_items, self.n_items_)
