"""The fused model's configuration (:class:`MGRConfig`) and how it resolves against a dataset:
which granularities to fuse and how to read the behaviour history."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from mgrec.data.dataset import Dataset
from mgrec.data.split import PROTOCOLS
from mgrec.encoders.base import GRANULARITIES
from mgrec.errors import ConfigError
from mgrec.losses import LOSSES

__all__ = ["MGRConfig", "resolve_granularities", "resolve_behavior_mode", "resolve_cold_dropout", "resolve_loss",
           "resolve_loss_precision"]

#: The most ``cold_dropout: auto`` trains as new users.
MAX_AUTO_COLD_DROPOUT = 0.5
#: ``loss: auto`` trains with the full softmax up to this many items, sampled softmax beyond.
SOFTMAX_MAX_ITEMS = 10_000

logger = logging.getLogger("mgrec.mgr")

_FUSION_NAMES = ("weighted", "product", "deep", "gated")


@dataclass
class MGRConfig:
    """Hyperparameters of the fused model.

    Attributes:
        dim: vector size ``D`` of every granularity and the item tower.
        granularities: the granularities to fuse; ``None`` = every one the dataset carries
            (missing ones are dropped with a warning). Naming one the data lacks is an error.
        fusion: ``weighted``, ``product``, ``deep`` or ``gated``.
        behavior_mode: ``sequence``, ``set`` or ``auto`` (see the module docstring).
        split_protocol: the split the data came from (``random``, ``loo``, ``temporal``),
            which ``auto`` uses; ``None`` infers it.
        loss: ``softmax`` (full), ``sampled_softmax`` (popularity-sampled negatives with
            logQ correction), ``bpr``, or ``auto``: ``softmax`` for catalogues up to
            :data:`SOFTMAX_MAX_ITEMS` items, ``sampled_softmax`` beyond. A full-softmax step
            costs ``batch x items x dim`` multiply-adds plus a softmax over every item, which
            dominates an epoch on large catalogues (lastfm-2k, 17.6k items: about 0.3 s per
            1024 examples on one core); 1024 shared negatives cost about a seventeenth of that
            and validated as well there (see docs/benchmarks.md).
        loss_precision: the full softmax's matrix products (logits and their gradients):
            ``float32``; ``bfloat16`` (mixed precision: the softmax, the loss and the gradient
            sums stay float32); or ``auto``: ``bfloat16`` where the training device multiplies
            it natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU that supports it),
            ``float32`` elsewhere. On ml-100k ``loo`` (one thread, AVX512-BF16) it cuts the
            epoch by about 9%. Other losses always run in float32.
        n_negatives: negatives per batch (``sampled_softmax``) or per row (``bpr``).
        optimizer: ``adamw`` or ``sgd``.
        lr: learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        batch_size: training examples per step.
        epochs: maximum epochs.
        eval_every: evaluate every this many epochs.
        patience: evaluations without improvement before stopping.
        id_dropout: probability of dropping an item's or user's id part while training.
        dropout: dropout inside the encoders.
        hist_dropout: set mode: probability of dropping a whole history event while training.
        cold_dropout: probability that a training batch is encoded as if its users were new:
            the history granularities (``behavior``, ``item``) count as absent and the user id
            is unknown, so the fusion also learns to rank from profile, friends and time alone
            (cold-start users). ``auto``: the share of the dataset's users without a training
            event (the users the model will serve cold, e.g. those new in a temporal split's
            later periods), at most 0.5; 0 when every user has training events.
        linear: set mode: add a linear item-item path (untied input embeddings) to the
            behavior granularity.
        user_ids: the user granularity includes each known user's id embedding; ``False``
            keeps only the profile features (every user is then encoded as a new user with
            that profile). An ablation of the id part alone: on ml-100k ``loo`` (3 seeds) the
            full model scores 0.1127, without ids 0.1142, without the whole granularity 0.1229
            (docs/benchmarks.md).
        item_bias: reserve the last coordinate of the user vector for a constant 1, so the
            item vector's last coordinate is an item bias (the catalogue's prior, learned from
            id, content and popularity; see :class:`~mgrec.model.MGRNet`). Scoring stays one
            dot product. Off by default: on seed 0 it moved ml-100k ``random`` test NDCG@10
            from 0.3407 to 0.3418 and the synthetic world's ``loo`` from 0.1080 to 0.1043, and
            ml-100k cold users (3 seeds) from 0.4951 to 0.5030, still below Pop's 0.5120.
        item_item: the behaviour granularity's linear item-item part (:mod:`mgrec.item_item`):
            ``ease`` adds closed-form EASE scores over the whole training history, weighted by a
            scale chosen on validation after training (0 turns it off); ``auto`` does so for
            unordered histories (``set`` mode) on catalogues up to 40k items; ``none`` never.
        item_item_reg: EASE's L2 penalty for that part, or several: each is fitted after
            training and the (penalty, scale) pair that validates best is kept. The default
            spans the penalties EASE itself picks on validation here (250 on ml-100k, 100 on
            ciao, 50 on lastfm-2k).
        item_item_rank: the most dimensions the part adds to the user and item vectors (a
            catalogue up to this size is exact).
        sparse_ids: ``auto``: with a sampled loss (``sampled_softmax``, ``bpr``), set-mode
            histories and at least 50k users + items, the user and item id tables get sparse
            gradients and lazily decayed Adam updates (:mod:`mgrec.optim`), so a step costs the
            rows it touches, not the whole tables; ``off``: always dense.
        feature_min_count: labels and tokens of user and item features found on fewer
            entities than this are dropped (read as missing). 2 shrinks lastfm-2k's token
            table from 28.2k to 8.5k rows (artist names and tags on one artist only), but
            lowered seed 0's test NDCG@10 on ml-100k (0.3460 to 0.3396) and lastfm-2k (0.2133,
            against 0.2202 with every token at the commit before), so the default keeps all.
        social_items: ``auto`` adds to the score a weight times the number of times an item is
            among the friends' recent items (:mod:`mgrec.social_items`), the weight chosen on
            validation after training (0 drops the part), when the ``social`` granularity is
            fused; ``none`` never. With the part on, every user is scored exactly (no index).
        profile_prior: ``auto`` ranks users with no history and no friends by the profile
            prior (:mod:`mgrec.profile_prior`), a softmax model over profile codes fitted after
            the network and stopped early on training users it left out, when the model fuses
            the ``user`` granularity, the dataset has user features and the catalogue is at most
            :data:`SOFTMAX_MAX_ITEMS` items; ``off`` leaves them to the network's new-user path.
            On ml-100k cold users (3 seeds) it scored NDCG@10 0.5364 against the network's
            0.4951 and Pop's 0.5120 (see docs/benchmarks.md).
        prior_dim: the prior's embedding size.
        prior_min_users: profile codes carried by fewer training users are not used by the
            prior (ml-100k: every zip code but a few falls below 20).
        max_len: history events per user.
        window_stride: sequence mode: training targets per transformer pass. Each user's
            targets are cut into blocks of this many, and a block is trained from one window
            of the ``max_len`` events before its last target, so every target sees at least
            ``max_len - window_stride`` earlier events (or its whole past). ``None``:
            ``max_len // 2``. Larger is faster (fewer, less overlapping windows) with less
            guaranteed context: on ml-100k ``loo`` (seed 0, commit e4aab6a) 34 trained in 87 s
            against 111 s for 25, but test NDCG@10 fell from 0.1007 to 0.0925.
        max_friends: friends per user.
        friend_len: recent items per friend.
        threads: torch threads while training (0: torch's default, one per core).
        progress: show a progress bar over epochs.
    """

    dim: int = 64
    granularities: list[str] | None = None
    fusion: str = "gated"
    behavior_mode: str = "auto"
    split_protocol: str | None = None
    loss: str = "auto"
    loss_precision: str = "auto"
    n_negatives: int = 1024
    optimizer: str = "adamw"
    # lr, weight_decay, batch_size and hist_dropout: best on ml-100k validation
    # (seed 0): valid NDCG@10 0.2644 at about 3 s per epoch on 2 cores (EASE: 0.2630). With
    # batches of 1024 the decoupled decay per epoch (steps x lr x weight_decay) equals that
    # of batches of 256 at lr 1e-3 and weight_decay 0.5, which it replaced.
    lr: float = 2e-3
    weight_decay: float = 1.0
    batch_size: int = 1024
    epochs: int = 100
    eval_every: int = 1
    # 20, not 10: validation NDCG@10 moves by about 2% from epoch to epoch while it still
    # rises, so 10 stopped on noise (ciao `random` seed 1 stopped at epoch 16 with its best
    # at 6, valid 0.0470, where training on reached 0.0508 at epoch 38; the synthetic worlds
    # alike); MultiVAE's default is 20 too
    patience: int = 20
    id_dropout: float = 0.1
    dropout: float = 0.2
    hist_dropout: float = 0.5
    cold_dropout: float | str = "auto"
    linear: bool = False
    user_ids: bool = True
    item_bias: bool = False
    item_item: str = "auto"
    item_item_reg: float | list[float] = field(default_factory=lambda: [50.0, 250.0, 1000.0])
    item_item_rank: int = 512
    sparse_ids: str = "auto"
    feature_min_count: int = 1
    social_items: str = "auto"
    profile_prior: str = "auto"
    prior_dim: int = 16
    prior_min_users: int = 20
    max_len: int = 50
    window_stride: int | None = None
    max_friends: int = 20
    friend_len: int = 10
    threads: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "n_negatives", "batch_size", "epochs", "eval_every", "patience",
                     "max_len", "max_friends", "friend_len", "item_item_rank", "feature_min_count",
                     "prior_dim", "prior_min_users"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.window_stride is not None and not 1 <= self.window_stride <= self.max_len:
            raise ValueError(f"window_stride must lie in 1..max_len ({self.max_len}) or be null, "
                             f"got {self.window_stride}")
        choices = {"fusion": _FUSION_NAMES, "behavior_mode": ("auto", "sequence", "set"),
                   "item_item": ("auto", "ease", "none"), "sparse_ids": ("auto", "off"),
                   "profile_prior": ("auto", "off"), "social_items": ("auto", "none"),
                   "loss": ("auto", *LOSSES), "optimizer": ("adamw", "sgd"),
                   "loss_precision": ("auto", "float32", "bfloat16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.split_protocol is not None and self.split_protocol not in PROTOCOLS:
            raise ValueError(f"split_protocol must be one of {', '.join(PROTOCOLS)} or null")
        if self.granularities is not None:
            bad = [g for g in self.granularities if g not in GRANULARITIES]
            if bad or not self.granularities or len(set(self.granularities)) != len(self.granularities):
                raise ValueError(f"granularities must be distinct names from {', '.join(GRANULARITIES)}; "
                                 f"got {self.granularities}")
        if self.lr <= 0 or self.weight_decay < 0 or self.threads < 0 or min(self.item_item_regs, default=0) <= 0:
            raise ValueError("lr and every item_item_reg must be > 0 (and at least one given), "
                             "weight_decay and threads >= 0")
        if isinstance(self.cold_dropout, str) and self.cold_dropout != "auto":
            raise ValueError(f"cold_dropout must be 'auto' or a number in [0, 1), got {self.cold_dropout!r}")
        for name in ("id_dropout", "dropout", "hist_dropout", "cold_dropout"):
            if name == "cold_dropout" and self.cold_dropout == "auto":
                continue
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")

    @property
    def item_item_regs(self) -> list[float]:
        """``item_item_reg`` as a list."""
        return [float(r) for r in (self.item_item_reg if isinstance(self.item_item_reg, list) else
                                   [self.item_item_reg])]


def resolve_granularities(cfg: MGRConfig, dataset: Dataset) -> list[str]:
    """The granularities to fuse, in :data:`GRANULARITIES` order.

    Raises:
        ConfigError: when an explicitly requested granularity is missing from the data.
    """
    have = dataset.granularities
    if cfg.granularities is not None:
        missing = [g for g in cfg.granularities if g not in have]
        if missing:
            raise ConfigError(f"mgr: granularity {missing[0]!r} is not available in dataset "
                              f"{dataset.name!r} (it has: {', '.join(have)})")
        return [g for g in GRANULARITIES if g in cfg.granularities]
    dropped = [g for g in GRANULARITIES if g not in have]
    if dropped:
        logger.warning("mgr: dataset %r lacks granularities %s; fusing %s", dataset.name,
                       ", ".join(dropped), ", ".join(have))
    return [g for g in GRANULARITIES if g in have]


def resolve_behavior_mode(cfg: MGRConfig, dataset: Dataset, train: pd.DataFrame,
                          valid: pd.DataFrame | None) -> str:
    """``sequence`` or ``set`` (see :class:`MGRConfig`)."""
    if cfg.behavior_mode != "auto":
        return cfg.behavior_mode
    if not dataset.has_time:
        return "set"
    protocol = cfg.split_protocol or dataset.meta.get("split_protocol")
    if protocol is not None:
        return "sequence" if protocol in ("loo", "temporal") else "set"
    if valid is None or len(valid) == 0 or "timestamp" not in valid.columns:
        return "set"
    last = train.groupby("user")["timestamp"].max()
    before = last.reindex(valid["user"].to_numpy()).to_numpy(dtype=np.float64)
    later = np.isnan(before) | (valid["timestamp"].to_numpy(dtype=np.float64) >= before)
    mode = "sequence" if later.mean() >= 0.99 else "set"
    logger.info("mgr: %.1f%% of validation events follow the user's training events: %s mode",
                100 * later.mean(), mode)
    return mode


def resolve_cold_dropout(cfg: MGRConfig, n_users: int, train: pd.DataFrame, *,
                         n_trained: int | None = None) -> float:
    """``cfg.cold_dropout``, with ``auto`` resolved to the share of the ``n_users`` users who
    have no event in ``train`` (at most :data:`MAX_AUTO_COLD_DROPOUT`); ``n_trained``: the
    number of users with events, when ``train`` is only a part of the training events."""
    if cfg.cold_dropout != "auto":
        return float(cfg.cold_dropout)
    if n_users == 0:
        return 0.0
    if n_trained is None:
        n_trained = len(np.unique(train["user"].to_numpy()))
    share = 1.0 - n_trained / n_users
    return float(min(MAX_AUTO_COLD_DROPOUT, max(share, 0.0)))


def resolve_loss(cfg: MGRConfig, n_items: int) -> str:
    """``cfg.loss``, with ``auto`` resolved for a catalogue of ``n_items`` (see :class:`MGRConfig`)."""
    if cfg.loss != "auto":
        return cfg.loss
    return "softmax" if n_items <= SOFTMAX_MAX_ITEMS else "sampled_softmax"


def resolve_loss_precision(cfg: MGRConfig, device: torch.device) -> str:
    """``cfg.loss_precision``, with ``auto`` resolved for the training ``device`` (see
    :class:`MGRConfig`): ``bfloat16`` where the device multiplies it natively."""
    if cfg.loss_precision != "auto":
        return cfg.loss_precision
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = device.type == "cpu" and torch.backends.mkldnn.is_available() \
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "bfloat16" if native else "float32"
